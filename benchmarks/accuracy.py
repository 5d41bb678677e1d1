"""Test accuracy of the four methods on the embedded digits task, same model and budget, several seeds.

Every run: ``small_cnn`` on ``datamodules.DigitsDataModule`` (fixed train/val/test split), the method's
LightningModule with its defaults (BSO/T-BSO: paper γ, β, with γ and 1 − β (β1) × ``--bso-decay`` = 0.3
after every epoch — the authors' step schedule (×0.1 every 50 of 400 epochs) compressed to this budget, as the
float learning rates are cosine-annealed to 0; OTTT: SGD lr 0.1 on every parameter; BPTT:
Adam on the latent weights, lr ``--bptt-latent-lr`` = 1e-2 (better than the class default 1e-3 on this short
budget), + SGD lr 0.1 on the rest), the same epochs and batch size, evaluated on the
test split after BatchNorm re-estimation (as the classifier does before every evaluation). A seed sets the
initialisation and the order of the training batches.

    python benchmarks/accuracy.py --threads 1          # 4 methods x T in {2, 4} x 3 seeds, 4 epochs
    python benchmarks/accuracy.py --threads 1 --jobs 2 --epochs 12 --bso-decay 0.1 --decay-every 4 \
        --seeds 0 1 2 3 4 --name accuracy_12_epochs   # the quick start's budget and schedule
    python benchmarks/accuracy.py --quick              # smoke test

``--settings paper authors`` runs BSO/T-BSO once per setting — the behaviours of
``configs/reference/<setting>_<bso|tbso>.yaml`` (docs/fidelity.md) applied on top — and reports T-BSO − BSO per T: the
mean over seeds of the paired difference (same seed: same initialisation and batch order for both), with a
95% Student-t confidence interval, for both readings of the test accuracy (BatchNorm re-estimated:
``test/acc``; running statistics, the authors' evaluation: ``test/acc_running_bn``):

    python benchmarks/accuracy.py --threads 1 --jobs 2 --methods bso tbso --settings paper authors \
        --time-steps 2 4 6 --seeds 0 1 2 3 4 --epochs 6 --bso-decay 0.1 --decay-every 2 --name accuracy_fidelity
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import METHODS, markdown_table, mean_std  # noqa: E402


SETTINGS_DIR = _common.ROOT / "configs" / "reference"


def setting_overrides(setting: str, method: str = "tbso") -> dict[str, Any]:
    """The OnlineClassifier arguments of ``configs/reference/<setting>_<method>.yaml`` (one fragment per binary
    optimizer; ``<setting>.yaml`` if there is no such file): its ``model.init_args``."""
    import yaml

    path = SETTINGS_DIR / f"{setting}_{method}.yaml"
    if not path.is_file():
        path = SETTINGS_DIR / f"{setting}.yaml"
    if not path.is_file():
        raise SystemExit(f"--settings: no {path.relative_to(_common.ROOT)} (nor {setting}_{method}.yaml)")
    return dict(yaml.safe_load(path.read_text())["model"]["init_args"])


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper) of the Student-t confidence interval of the mean; (mean, nan, nan) for one value."""
    import math

    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def run_one(setting: str, method: str, time_steps: int, seed: int, args) -> dict[str, Any]:
    import lightning as L

    from datamodules import DigitsDataModule

    class SeededOrderDigits(DigitsDataModule):
        """The fixed split of seed 0; the training batch order follows the run's seed."""

        def train_dataloader(self):
            loader = super().train_dataloader()
            loader.sampler.seed = 1000 + seed
            return loader

    L.seed_everything(seed, verbose=False)
    extra: dict[str, Any] = {}
    if method == "bptt_latent":
        extra["latent_optimizer"] = {"class_path": "torch.optim.Adam", "init_args": {"lr": args.bptt_latent_lr}}
    if method in ("bso", "tbso") and args.bso_decay != 1.0:  # the authors' step schedule, compressed
        extra["schedule"] = {"class_path": "bso_lightning.optim.StepSchedule", "init_args": {
            "every": args.decay_every, "factor": args.bso_decay, "interval": "epoch"}}
    elif method in ("bso", "tbso"):  # --bso-decay 1: constant γ and β (not the classifier's run_exp default)
        extra["schedule"] = "bso_lightning.optim.ConstantSchedule"
    if method in ("bso", "tbso") and setting != "default":
        extra = _common.merge_arguments(extra, setting_overrides(setting, method))
    if method in ("bso", "tbso"):
        extra = _common.merge_arguments(extra, _common.parse_settings(args.set, method))
    arch_kwargs = {"width": args.width, **extra.pop("arch_kwargs", {})}
    task = _common.make_task(method, "small_cnn", time_steps, num_classes=10, in_channels=1,
                             arch_kwargs=arch_kwargs, bn_recalibration_batches=args.bn_batches, **extra)
    data = SeededOrderDigits(batch_size=args.batch_size, image_size=args.image_size, seed=0)
    limits = {"limit_train_batches": args.limit_train_batches} if args.limit_train_batches else {}
    trainer = _common.make_trainer(max_epochs=args.epochs, limit_val_batches=0, deterministic=True, **limits)
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    train_acc = float(trainer.callback_metrics.get("train/acc", float("nan")))
    test = trainer.test(task, datamodule=data, verbose=False)[0]
    return {"setting": setting, "method": method, "time_steps": time_steps, "seed": seed,
            "test_acc": 100 * test["test/acc"], "test_acc_running_bn": 100 * test["test/acc_running_bn"],
            "train_acc": 100 * train_acc, "seconds": time.perf_counter() - start}


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--time-steps", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=16)
    parser.add_argument("--bn-batches", type=int, default=20, help="bn_recalibration_batches of every method")
    parser.add_argument("--limit-train-batches", type=int, default=None)
    parser.add_argument("--name", default="accuracy", help="stem of the result files (<out>/<name>.md, .json)")
    parser.add_argument("--bso-decay", type=float, default=0.3,
                        help="BSO/T-BSO: multiply γ and 1 − β (β1) by this every --decay-every epochs (1 = constant)")
    parser.add_argument("--decay-every", type=int, default=1, help="epochs between two --bso-decay steps")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs in parallel, one process each (results do not depend on it)")
    parser.add_argument("--settings", nargs="+", default=["default"],
                        help="BSO/T-BSO behaviour sets: 'default' (the class defaults) or the name of a fragment in "
                             "configs/reference/ ('paper', 'authors': <name>_<bso|tbso>.yaml); the other methods run once")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="BSO/T-BSO arguments applied after the setting, e.g. --set trace=ottt "
                             "optimizer.threshold=1e-6 (benchmarks/_common.parse_settings)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="no runs: re-render the report of the runs stored in this results .json (with its arguments)")
    parser.add_argument("--bptt-latent-lr", type=float, default=1e-2,
                        help="Adam learning rate of BPTT's latent weights (class default 1e-3 is slow on this budget)")
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    _common.apply_threads(args)
    if args.quick:
        args.epochs, args.width, args.limit_train_batches, args.bn_batches = 1, 4, 3, 2
        args.image_size = 8
        if args.time_steps == [2, 4]:
            args.time_steps = [1]
        if args.seeds == [0, 1, 2]:
            args.seeds = [0]
    _common.quiet_lightning()
    if args.from_json is not None:
        stored = json.loads(args.from_json.read_text())
        rerun = argparse.Namespace(**{**vars(parser.parse_args([])), **stored["setting"], "out": args.out,
                                      "from_json": args.from_json})
        return report(stored["results"], rerun, stored["machine"])

    info = _common.machine_info()
    for setting in args.settings:
        if setting != "default":
            for method in set(args.methods) & {"bso", "tbso"}:
                setting_overrides(setting, method)  # fail before any run if a fragment is missing
    binary = ("bso", "tbso")
    runs = [(setting, m, t, seed) for setting in args.settings for t in args.time_steps for m in args.methods
            for seed in args.seeds if m in binary or setting == args.settings[0]]
    results = []
    for r in _common.run_parallel(run_one, runs, args, jobs=args.jobs):
        results.append(r)
        print(f"  [{r['setting']}] {METHODS[r['method']]:<22} T={r['time_steps']} seed={r['seed']}: test "
              f"{r['test_acc']:.2f}% (running BN {r['test_acc_running_bn']:.2f}%)  (train {r['train_acc']:.2f}%)  "
              f"[{r['seconds']:.0f} s]", flush=True)
    results.sort(key=lambda r: runs.index((r["setting"], r["method"], r["time_steps"], r["seed"])))
    return report(results, args, info)


def report(all_results: list[dict[str, Any]], args, info: dict[str, Any]) -> list[dict[str, Any]]:
    """Print (and write, unless ``--quick``) the tables of ``all_results``; returns them."""
    binary = ("bso", "tbso")
    results = [r for r in all_results if r["setting"] == args.settings[0]]
    ts = sorted(set(args.time_steps))

    def accs(m, t, key="test_acc", setting=args.settings[0]):
        return [r[key] for r in all_results if r["method"] == m and r["time_steps"] == t and r["setting"] == setting]

    def cell(values):
        mu, sd = mean_std(values)
        return f"{mu:.2f} ± {sd:.2f}"

    rows = [(setting, m) for setting in args.settings for m in args.methods if m in binary or setting == args.settings[0]]
    label = (lambda s, m: f"{METHODS[m]} [{s}]") if len(args.settings) > 1 else (lambda s, m: METHODS[m])
    table = markdown_table(
        ["method", *(f"T={t} test %" for t in ts), *(f"T={t} running-BN test %" for t in ts),
         *(f"T={t} train %" for t in ts)],
        [[label(s, m), *(cell(accs(m, t, setting=s)) for t in ts),
          *(cell(accs(m, t, "test_acc_running_bn", setting=s)) for t in ts),
          *(cell(accs(m, t, "train_acc", setting=s)) for t in ts)] for s, m in rows])
    targets = []
    if "ottt_fp" in args.methods:
        for t in ts:
            ref = mean_std(accs("ottt_fp", t))[0]
            for m in ("bso", "tbso", "bptt_latent"):
                if m in args.methods:
                    gap = mean_std(accs(m, t))[0] - ref
                    note = (f" (target ≥ −1.50: {'met' if gap >= -1.5 else 'MISSED'})" if m in ("bso", "tbso") else "")
                    targets.append(f"T={t}: {METHODS[m]} − OTTT = {gap:+.2f} points{note}")
    differences = tbso_minus_bso(all_results, args.settings, ts) if set(binary) <= set(args.methods) else []
    seconds = {m: sum(r["seconds"] for r in all_results if r["method"] == m) for m in args.methods}
    setting = (f"small_cnn (width {args.width}) on digits {args.image_size}×{args.image_size}, batch {args.batch_size}, "
               f"{args.epochs} epochs" + (f" × {args.limit_train_batches} batches" if args.limit_train_batches else "")
               + f", BatchNorm re-estimated over {args.bn_batches} batches before testing; BSO/T-BSO γ and 1 − β "
               f"× {args.bso_decay:g} every {args.decay_every} epoch(s); BPTT latent lr "
               f"{args.bptt_latent_lr:g} (Adam); seeds {args.seeds} "
               f"(mean ± sample std over {len(args.seeds)} seed(s)); CPU")
    if args.settings != ["default"]:
        setting += f"; settings {', '.join(args.settings)} (BSO/T-BSO: configs/reference/<setting>_<method>.yaml)"
    if args.set:
        setting += f"; BSO/T-BSO also {', '.join(args.set)}"
    text = "\n".join([
        _common.report_header("Accuracy on the embedded digits task", info),
        f"Setting: {setting}.", "",
        "Test accuracy, %, and the running training accuracy of the last epoch (measured during training; the "
        "online methods update the weights between the time steps of a batch, so it runs ahead of the weights "
        "at the end):", "", table, "",
        *(["Gaps to full-precision OTTT:", "", *(f"- {t}" for t in targets), ""] if targets else []),
        *differences,
        "Wall time per method (all runs): " + ", ".join(f"{METHODS[m]} {s:.0f} s" for m, s in seconds.items()),
    ])
    from_json = getattr(args, "from_json", None)
    if from_json is not None:  # the stored runs' command, not the re-rendering one
        ran = getattr(args, "command", None) or "(not stored; the runs' arguments are the JSON's \"setting\")"
        text = text.replace(f"Command: `{_common.command_line()}`",
                            f"Command: `{ran}` (report re-rendered from {from_json.name})", 1)
    print("\n" + text, flush=True)
    setting_record = vars(args) | {"out": str(args.out), "from_json": None if from_json is None else str(from_json),
                                   "command": getattr(args, "command", None) or _common.command_line()}
    _common.write_results(_common.output_dir(args), args.name, text,
                          {"machine": info, "setting": setting_record, "results": all_results})
    return all_results


def tbso_minus_bso(results: list[dict[str, Any]], settings: list[str], ts: list[int]) -> list[str]:
    """Markdown lines: T-BSO − BSO per setting and T (paired by seed, 95% t-interval), both readings, verdicts."""
    def paired(setting, t, key):
        by_seed = {(r["method"], r["seed"]): r[key] for r in results if r["setting"] == setting and r["time_steps"] == t}
        return [by_seed[("tbso", s)] - by_seed[("bso", s)] for (m, s) in by_seed if m == "tbso" and ("bso", s) in by_seed]

    readings = (("test_acc", "BatchNorm re-estimated (test/acc)"),
                ("test_acc_running_bn", "running BatchNorm statistics (test/acc_running_bn)"))
    rows, verdicts = [], []
    for setting in settings:
        for key, label in readings:
            cells, beats, sure = [], True, True
            for t in ts:
                d = paired(setting, t, key)
                mean, low, high = t_interval(d)
                cells.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]")
                beats &= mean > 0
                sure &= low > 0
            rows.append([setting, label, *cells])
            verdicts.append(f"- {setting}, {label}: T-BSO > BSO in the mean at every T: **{'yes' if beats else 'no'}**; "
                            f"with the 95% interval above 0 at every T: **{'yes' if sure else 'no'}**")
    n = len({r["seed"] for r in results})
    return ["T-BSO − BSO, test accuracy points: mean of the per-seed difference [95% Student-t interval], "
            f"{n} seed(s):", "",
            markdown_table(["setting", "reading", *(f"T={t}" for t in ts)], rows), "", *verdicts, ""]


if __name__ == "__main__":
    main()
