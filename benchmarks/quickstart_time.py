"""Wall time and test accuracy of README's quick start: ``bso-lightning fit`` with no arguments.

Runs the installed console script (the very command a new user types) in a fresh process, ``--repeats``
times, in a temporary folder, and reads the test accuracy from the CSV log of the run. Two times per run:

* ``command``: the whole command, from process start to exit (Python start-up and imports included);
* ``fit + test``: training and testing alone (from the start of ``fit`` to the end of ``test``, measured by
  the ``FitTestTimer`` callback this script adds), which is what the README's claim is about.

    python benchmarks/quickstart_time.py                       # torch's default threads, 3 repeats
    OMP_NUM_THREADS=1 python benchmarks/quickstart_time.py --threads 1    # on a machine shared with other jobs
    python benchmarks/quickstart_time.py -- --trainer.max_epochs 3        # extra arguments for `fit`
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import markdown_table, mean_std  # noqa: E402

TIMER = "--trainer.callbacks+=quickstart_time.FitTestTimer"


try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover
    Callback = object  # type: ignore[assignment,misc]


class FitTestTimer(Callback):
    """Loaded into the timed CLI process: prints the seconds from the start of ``fit`` to the end of ``test``."""

    start: Optional[tuple[float, float]] = None

    def on_fit_start(self, trainer, pl_module) -> None:
        FitTestTimer.start = (time.perf_counter(), time.process_time())

    def on_test_end(self, trainer, pl_module) -> None:
        if FitTestTimer.start is not None:
            wall, cpu = time.perf_counter() - FitTestTimer.start[0], time.process_time() - FitTestTimer.start[1]
            print(f"QUICKSTART_TIMER fit+test {wall:.3f} cpu {cpu:.3f}", flush=True)


def console_script() -> list[str]:
    """``.venv/bin/bso-lightning`` beside this interpreter, else ``python -m bso_lightning.cli``."""
    script = Path(sys.executable).with_name("bso-lightning")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bso_lightning.cli"]


def read_test_acc(root: Path) -> float:
    """``test/acc`` from the run's CSV log (``lightning_logs/version_0/metrics.csv``)."""
    for path in sorted(root.rglob("metrics.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("test/acc"):
                    return 100 * float(row["test/acc"])
    raise SystemExit(f"no test/acc in the CSV logs under {root}")


def run_once(extra: list[str], threads: Optional[int]) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="bso_quickstart_"))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent), env.get("PYTHONPATH", "")])
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [*console_script(), "fit", "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={root}",
           f"--trainer.default_root_dir={root}", TIMER, *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
    command_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"`{' '.join(cmd)}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    match = re.search(r"QUICKSTART_TIMER fit\+test ([0-9.]+) cpu ([0-9.]+)", proc.stdout + proc.stderr)
    if match is None:
        raise SystemExit(f"the timed run printed no QUICKSTART_TIMER line:\n{proc.stdout[-2000:]}")
    result = {"command_s": command_s, "command_cpu_s": cpu_s, "fit_test_s": float(match.group(1)),
              "fit_test_cpu_s": float(match.group(2)),
              "test_acc": read_test_acc(root)}
    shutil.rmtree(root, ignore_errors=True)
    return result


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of the default seed (ignored with --seeds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="one run per seed (--seed_everything S): the accuracy claim needs several seeds")
    parser.add_argument("--name", default="quickstart_time", help="stem of the result files")
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats = 1
        extra = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                 "--trainer.limit_test_batches=1", *extra]
    info = _common.machine_info()
    info["torch_threads"] = args.threads if args.threads is not None else info["torch_threads"]
    results = []
    seeds = args.seeds if args.seeds else [None] * args.repeats
    for i, seed in enumerate(seeds):
        r = run_once(extra + ([f"--seed_everything={seed}"] if seed is not None else []), args.threads)
        r["seed"] = seed
        results.append(r)
        print(f"  run {i + 1}{f' (seed {seed})' if seed is not None else ''}: command {r['command_s']:.1f} s (CPU {r['command_cpu_s']:.1f} s), "
              f"fit + test {r['fit_test_s']:.1f} s (CPU {r['fit_test_cpu_s']:.1f} s), "
              f"test accuracy {r['test_acc']:.2f}%", flush=True)

    def cell(key, fmt="{:.1f}"):
        mu, sd = mean_std([r[key] for r in results])
        return f"{fmt.format(mu)} ± {fmt.format(sd)} (min {fmt.format(min(r[key] for r in results))})"

    table = markdown_table(["runs", "fit + test, wall s", "fit + test, CPU s", "whole command, wall s",
                            "whole command, CPU s", "test accuracy, %"],
                           [[len(results), cell("fit_test_s"), cell("fit_test_cpu_s"), cell("command_s"),
                             cell("command_cpu_s"),
                             cell("test_acc", "{:.2f}")]])
    command = " ".join(["bso-lightning", "fit", *extra])
    text = "\n".join([_common.report_header("Quick start: wall time and test accuracy", info),
                      f"Timed: `{command}` (README command 1 after the install), {len(results)} fresh processes "
                      f"one after the other{f', seeds {args.seeds}' if args.seeds else ' (the default seed)'}; "
                      f"OMP_NUM_THREADS={args.threads or 'unset (torch default)'}.", "",
                      "Per run: " + ", ".join(f"{r['test_acc']:.2f}%" + (f" (seed {r['seed']})" if r["seed"] is not None
                                                                          else "") for r in results) + ".", "",
                      table, "",
                      "CPU s is the user + system time of the command's process. With one thread it is what the "
                      "wall time would be on an otherwise idle core; on a loaded machine the wall time is longer "
                      f"(1-minute load average at the start: {info['load_average_1m']} on {info['nproc']} cores)."])
    print("\n" + text, flush=True)
    _common.write_results(_common.output_dir(args), args.name, text,
                          {"machine": info, "extra_args": extra, "results": results})
    return results


if __name__ == "__main__":
    main()
