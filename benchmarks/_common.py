"""Helpers shared by the benchmark scripts: the four methods, the machine, tables and result files."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` from anywhere: import the package and datamodules
    sys.path.insert(0, str(ROOT))

RESULTS_DIR = ROOT / "benchmarks" / "results"

#: Method name -> label used in tables and plots (the paper's Figure 4 names).
METHODS: dict[str, str] = {
    "bptt_latent": "BPTT (latent weights)",
    "ottt_fp": "OTTT (full precision)",
    "bso": "BSO",
    "tbso": "T-BSO",
}


#: The objects a classifier is given and the class each builds by default (``OnlineClassifier``'s defaults).
OBJECT_DEFAULTS: dict[str, str] = {
    "optimizer": "bso_lightning.optim.TBSO", "schedule": "bso_lightning.optim.RunExponentialSchedule",
    "fp_optimizer": "bso_lightning.optim.FullPrecisionSGD", "lr_scheduler": "bso_lightning.optim.CosineAnnealingToZero",
}


def cosine_over(epochs: int) -> dict[str, Any]:
    """``lr_scheduler``: the cosine learning rate over ``epochs`` epochs (a run without ``max_epochs``)."""
    return {"class_path": "bso_lightning.optim.CosineAnnealingToZero", "init_args": {"epochs": epochs}}


BINARY_OPTIMIZERS = {"bso": "bso_lightning.optim.BSO", "tbso": "bso_lightning.optim.TBSO"}


def parse_key_values(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` items as a dict, each value read as YAML (``1e-3`` as a float, which YAML 1.1 reads as a string)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)
            except ValueError:
                pass
        out[key] = parsed
    return out


def parse_settings(items: Sequence[str], optimizer: str = "tbso") -> dict[str, Any]:
    """``--set KEY=VALUE`` items (values read as YAML) as classifier arguments: a key is an argument
    (``trace=ndot``, ``schedule=bso_lightning.optim.ConstantSchedule``, ``loop={mse_weight: 0.1}``) or a dotted path
    into one (``optimizer.threshold=1e-6``, ``optimizer.init_args.threshold=1e-6``, ``loop.mse_weight=0.1``,
    ``arch_kwargs.width=8``); the flat names of the versions before issue 22 (``threshold=1e-6``,
    ``schedule=constant``, ``momentum_dtype=int8``) are translated (``bso_lightning.tasks.legacy``)."""
    from bso_lightning.tasks.legacy import translate_settings

    flat = parse_key_values(items)
    nested: dict[str, Any] = {}
    for key, value in translate_settings({k: v for k, v in flat.items() if "." not in k}, optimizer).items():
        nested = merge_arguments(nested, {key: value})
    for key, value in flat.items():
        if "." in key:
            name, _, field = key.partition(".")
            if name in OBJECT_DEFAULTS:
                nested = merge_arguments(nested, {name: {"init_args": {field.removeprefix("init_args."): value}}})
            else:
                nested = merge_arguments(nested, {name: {field: value}})
    return nested


def merge_arguments(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``base`` classifier arguments with ``update`` applied as a later ``--config`` would: an object
    (:data:`OBJECT_DEFAULTS`) keeps its class and earlier ``init_args`` unless the update names another class;
    ``loop`` and ``arch_kwargs`` dicts are merged; anything else is replaced."""
    out = dict(base)
    for key, value in update.items():
        if key in OBJECT_DEFAULTS and isinstance(value, (str, dict)):
            spec = {"class_path": value} if isinstance(value, str) else value
            previous = out.get(key) if isinstance(out.get(key), dict) else {"class_path": OBJECT_DEFAULTS[key]}
            class_path = spec.get("class_path") or previous["class_path"]
            init_args = dict(previous.get("init_args") or {}) if class_path == previous["class_path"] else {}
            out[key] = {"class_path": class_path, "init_args": {**init_args, **dict(spec.get("init_args") or {})}}
        elif key in ("loop", "arch_kwargs") and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def make_task(method: str, arch: str, time_steps: int, num_classes: int = 10, in_channels: int = 3,
              arch_kwargs: Optional[dict[str, Any]] = None, **overrides):
    """The LightningModule of ``method`` with the shared arguments (each class's defaults otherwise). ``overrides``
    are the class's own arguments (``OnlineClassifier``: ``optimizer`` may be a ``{"init_args": ...}`` dict whose
    class is the method's, BSO or T-BSO)."""
    from bso_lightning.tasks import BPTTLatentClassifier, OnlineClassifier, OTTTClassifier

    shared = dict(arch=arch, num_classes=num_classes, in_channels=in_channels, arch_kwargs=arch_kwargs,
                  time_steps=time_steps, **overrides)
    if method == "bptt_latent":
        return BPTTLatentClassifier(**shared)
    if method == "ottt_fp":
        return OTTTClassifier(**shared)
    if method in BINARY_OPTIMIZERS:
        given = shared.pop("optimizer", None)
        if given is not None and not isinstance(given, dict):
            raise ValueError(f"optimizer: give a {{'init_args': ...}} dict (the method {method!r} picks the class), "
                             f"got {given!r}")
        init_args = dict(given.get("init_args") or {}) if isinstance(given, dict) else {}
        return OnlineClassifier(optimizer={"class_path": BINARY_OPTIMIZERS[method], "init_args": init_args}, **shared)
    raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")


def quiet_lightning() -> None:
    """Silence Lightning's info lines and the warnings about tiny dataloaders in benchmark output."""
    import logging
    import warnings

    import lightning  # noqa: F401  (it sets its loggers to INFO when imported: import first, then lower)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def make_trainer(max_epochs: int = 1, accelerator: str = "cpu", **kwargs):
    """The package's quiet trainer (``bso_lightning.trainers``; the tests use the same one) for ``max_epochs``."""
    from bso_lightning.trainers import quiet_trainer

    return quiet_trainer(accelerator=accelerator, max_epochs=max_epochs, **kwargs)


# --------------------------------------------------------------------------- machine


def _run(cmd: Sequence[str]) -> str:
    if shutil.which(cmd[0]) is None:
        return ""
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, memory, load, library versions, GPU."""
    import lightning
    import spikingjelly  # noqa: F401
    import torch

    lscpu = _run(["lscpu"])
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                 platform.processor() or platform.machine())
    free = _run(["free", "-g"]).splitlines()
    mem_total_gb = free[1].split()[1] if len(free) > 1 and len(free[1].split()) > 1 else "?"
    try:
        from importlib.metadata import version
        sj_version = version("spikingjelly")
    except Exception:  # pragma: no cover
        sj_version = "?"
    info: dict[str, Any] = {
        "cpu": model,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": mem_total_gb,
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "spikingjelly": sj_version,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
    return info


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['cuda']}" if info.get("cuda") else ", no GPU"
    return (f"{info['cpu']}, {info['nproc']} cores ({info['torch_threads']} torch threads), "
            f"{info['memory_gb']} GB RAM{gpu}; Python {info['python']}, torch {info['torch']}, "
            f"lightning {info['lightning']}, spikingjelly {info['spikingjelly']}; "
            f"1-min load average at start {info['load_average_1m']}; {info['date']}")


# --------------------------------------------------------------------------- numbers and tables


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20


def fmt_mib(n_bytes: Optional[float]) -> str:
    if n_bytes is None:
        return "—"
    return f"{mib(n_bytes):,.1f}" if mib(n_bytes) >= 10 else f"{mib(n_bytes):.2f}"


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    def line(cells):
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def timed(fn: Callable[[], Any], sync: Optional[Callable[[], None]] = None) -> float:
    """Seconds one call of ``fn`` takes (``sync`` runs before the clock stops, e.g. CUDA synchronize)."""
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start


# --------------------------------------------------------------------------- files


def add_output_args(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke test (seconds); writes files only with --out")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 with --quick). On a machine shared with "
                             "other jobs, 1 thread avoids OpenMP threads waiting on each other")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for the result files (default: {RESULTS_DIR.relative_to(ROOT)} "
                             "for full runs, none for --quick)")


def apply_threads(args) -> None:
    """Set torch's CPU threads from ``--threads`` (1 under ``--quick`` unless given)."""
    import torch

    if args.threads is None and args.quick:
        args.threads = 1
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def _init_worker(threads: Optional[int]) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    quiet_lightning()


_worker_modules: dict[str, Any] = {}


def _call_in_worker(path: str, name: str, run: tuple, args) -> Any:
    """``<function name of the script at path>(*run, args)``; the script is loaded once per worker process."""
    import importlib.util

    if path not in _worker_modules:
        spec = importlib.util.spec_from_file_location(f"_benchmark_worker_{Path(path).stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _worker_modules[path] = module
    return getattr(_worker_modules[path], name)(*run, args)


def run_parallel(fn: Callable[..., Any], runs: Sequence[tuple], args, jobs: int = 1) -> Iterable[Any]:
    """Yield ``fn(*run, args)`` for every run, in order with ``jobs == 1``, else as ``jobs`` processes finish them.

    Each worker is a fresh (spawned) process with ``--threads`` torch threads that loads ``fn``'s script by
    its file path (so scripts loaded under any module name work); ``fn`` must be a module-level function of
    that script. A failing run raises in the parent.
    """
    if jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {jobs}")
    if jobs == 1:
        for run in runs:
            yield fn(*run, args)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(args.threads,)) as pool:
        script = fn.__code__.co_filename
        futures = [pool.submit(_call_in_worker, script, fn.__name__, run, args) for run in runs]
        for future in as_completed(futures):
            yield future.result()


def output_dir(args) -> Optional[Path]:
    out = args.out if args.out is not None else (None if args.quick else RESULTS_DIR)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    return out


def command_line() -> str:
    return " ".join(["python", *[a if " " not in a else repr(a) for a in [os.path.relpath(sys.argv[0], ROOT),
                                                                          *sys.argv[1:]]]])


def write_results(out: Optional[Path], name: str, markdown: str, data: dict[str, Any]) -> None:
    """Write ``<name>.md`` (the printed table with the machine and command) and ``<name>.json``."""
    if out is None:
        return
    (out / f"{name}.md").write_text(markdown + "\n")
    (out / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"wrote {out / (name + '.md')} and {name}.json", flush=True)


def report_header(title: str, info: dict[str, Any]) -> str:
    return f"## {title}\n\nMachine: {machine_line(info)}\n\nCommand: `{command_line()}`\n"
