"""The GPU check: one command that measures on one GPU, in under 8 minutes, what the project claims about GPUs.

Parts (each under its own time budget, all under one global deadline; what was measured is written after every
part, and a part that fails is recorded with its traceback and does not stop the others):

a. **correctness** — BSO and T-BSO on the device, eager and compiled (``fused=True``), dense and packed weights,
   float32 and bfloat16 momentum, against the eager CPU step on the same weights, gradients and rounding noise:
   the same flips (the momentum may differ in the last bit); on CUDA, host syncs in the steady-state step
   (``torch.cuda.set_sync_debug_mode``) and device kernels + copies per step (``torch.profiler``); then the
   ``cuda``-marked tests (``pytest -m cuda``) in a subprocess.
b. **memory against T** — peak ``torch.cuda.max_memory_allocated`` of one training iteration (VGG-11, CIFAR-10
   shapes, batch 128) at T = 1, 2, 4, 6, 8 (16 if time is left) for T-BSO, BSO, OTTT-FP and BPTT-latent, beside
   the paper's figures, measured as ``benchmarks/memory_vs_timesteps.py`` does; and the same through
   ``MemoryCallback`` in a run of its own, which must agree with the direct reading (within 2%).
c. **throughput** — images/s of a training iteration (VGG-11, batch 128, T = 4) for T-BSO eager/compiled,
   dense/packed, the bfloat16 options and OTTT-FP; the optimizer step alone on VGG-11's binary weights against
   ``torch.optim.SGD(foreach=True)`` and ``SGD(fused=True)`` on the same tensors, with kernels per step.
d. **quick start** on the device: ``bso-lightning fit`` (README's command) with ``trainer.accelerator`` set to
   the device: wall time of fit + test and whether the test accuracy reaches 98%.

On CPU (``--device cpu``) the CUDA-only figures are replaced by their CPU counterparts (state + autograd-graph
peak for memory, aten ops for kernels) and say so.

    python benchmarks/gpu_check.py                       # on a GPU: writes benchmarks/results/gpu_check.{md,json}
    python benchmarks/gpu_check.py --device cpu --batch-size 8 --time-steps 1 2 --out /tmp/gpu_check   # on CPU
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check    # tiny sizes on CPU in seconds (the test suite)

In ``--smoke`` the compiled step is replaced by the same per-tensor functions run uncompiled (a compile takes
~20 s on CPU), so every code path of the script runs in seconds; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import METHODS  # noqa: E402
from _gpu_report import (  # noqa: E402
    CALLBACK_TOLERANCE, NAME, PARTS, QUICKSTART_TARGET, Report, error_summary, memory_key, render_markdown,
)

#: Share of the global deadline each part may use (the rest: start-up and writing).
SHARES = {"a": 0.30, "b": 0.25, "c": 0.25, "d": 0.15}  # (what a part leaves unused goes to the next)
SMOKE_TESTS = "tests/optim/test_cuda_step.py"  # (collecting the whole suite takes longer than the smoke run)


class Deadline(Exception):
    """The global deadline passed: stop measuring, write what was measured."""


# --------------------------------------------------------------------------- settings and time


def settings_for(args) -> dict[str, Any]:
    """The sizes of every part (``--smoke``: tiny; otherwise the paper's, or what the flags say)."""
    if args.smoke:
        s = dict(arch="small_cnn", width=4, image_size=8, batch_size=2, time_steps=[1, 2], extra_time_steps=[],
                 throughput_time_steps=2, warmup=1, timed=1, step_reps=2, step_arch="small_cnn", step_width=4,
                 correctness_steps=3, deadline=90.0,
                 # (2, not 1: the CLI reads "1" as the float 1.0, i.e. every batch)
                 quickstart=["--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                             "--trainer.limit_val_batches=2", "--trainer.limit_test_batches=2",
                             "--trainer.num_sanity_val_steps=0", "--model.bn_recalibration_batches=1"])
    else:
        s = dict(arch="vgg11", width=None, image_size=32, batch_size=128, time_steps=[1, 2, 4, 6, 8],
                 extra_time_steps=[16], throughput_time_steps=4, warmup=2, timed=5, step_reps=20, step_arch="vgg11",
                 step_width=None, correctness_steps=6, deadline=465.0, quickstart=[])
    for key in ("arch", "width", "image_size", "batch_size", "time_steps", "deadline"):
        value = getattr(args, key, None)
        if value is not None:
            s[key] = value
    if args.arch is not None:  # parts a and c step this model's binary weights too
        s["step_arch"], s["step_width"] = s["arch"], s["width"]
    if args.time_steps is not None:
        s["extra_time_steps"] = []
    return s


class Clock:
    """The global deadline and the deadline of the part running now."""

    def __init__(self, seconds: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + seconds
        self.part_end = self.deadline

    def left(self) -> float:
        """Seconds left to the end of the current part (never past the global deadline)."""
        return min(self.part_end, self.deadline) - time.monotonic()

    def global_left(self) -> float:
        return self.deadline - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def check(self) -> None:
        if self.global_left() <= 0:
            raise Deadline("global deadline reached")


# --------------------------------------------------------------------------- device helpers


def synchronizer(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def free_memory(device: str) -> None:
    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def gpu_info(device: str) -> dict[str, Any]:
    """GPU name, memory, driver, CUDA runtime and cuDNN versions (empty on CPU)."""
    import torch

    if device != "cuda":
        return {}
    props = torch.cuda.get_device_properties(0)
    smi = _common._run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).strip()
    return {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "compute_capability": f"{props.major}.{props.minor}", "driver": smi.splitlines()[0] if smi else "?",
            "cuda_runtime": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "triton": _version("triton")}


def _version(package: str) -> Optional[str]:
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:
        return None


def count_device_work(fn: Callable[[], None], device: str) -> int:
    """Device kernels + memcpy/memset of one call of ``fn`` (CUDA), or aten ops called (CPU)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    sync = synchronizer(device)
    sync()
    with profile(activities=activities) as prof:
        fn()
        sync()
    events = prof.events()
    if device == "cuda":
        return sum(1 for e in events if e.device_type == DeviceType.CUDA)
    return sum(1 for e in events if e.name.startswith("aten::"))


def count_syncs(fn: Callable[[], None], device: str) -> Optional[int]:
    """Host-device synchronisations during ``fn`` (``torch.cuda.set_sync_debug_mode("warn")``); None on CPU."""
    import torch

    if device != "cuda":
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(1 for w in caught if "synchroniz" in str(w.message))


@contextlib.contextmanager
def uncompiled_step(active: bool):
    """In ``--smoke``: the compiled entry point runs the same per-tensor functions uncompiled."""
    from bso_lightning.optim import functional

    if not active:
        yield
        return
    original = functional._compiled_fn
    functional._compiled_fn = lambda name: {"bso": functional._bso_tensors, "tbso": functional._tbso_tensors}[name]
    try:
        yield
    finally:
        functional._compiled_fn = original


# --------------------------------------------------------------------------- a. correctness


def binary_shapes(arch: str, width: Optional[int]) -> list[tuple[int, ...]]:
    """Shapes of the binary weights of ``arch`` (parts a and c step the same tensors, so they share compiles)."""
    from bso_lightning.models import build_model
    from bso_lightning.nn.packed import binary_shape
    from bso_lightning.optim import split_parameters

    kwargs = {"width": width} if width is not None else {}
    model = build_model(arch, num_classes=10, in_channels=3, **kwargs)
    return [tuple(binary_shape(p)) for p in split_parameters(model).binary]


def _optimizer_kwargs(cls_name: str) -> dict[str, Any]:
    # decays and thresholds that flip a good share of the weights within a few steps of N(0, 1e-3²) gradients
    return dict(threshold=1.0, betas=(0.9, 0.999)) if cls_name == "TBSO" else dict(threshold=5e-5, beta=0.9)


def momentum_float32(state: dict[str, Any]):
    """The momentum of one tensor's optimizer state as float32 (int8: its codes times their block scales)."""
    from bso_lightning.optim.functional import dequantize_int8

    m = state["momentum"]
    return dequantize_int8(m, state["momentum_scale"]) if "momentum_scale" in state else m.float()


def step_case(cls_name: str, storage: str, momentum_dtype: str, path: str, device: str, shapes, steps: int,
              seed: int = 0) -> dict[str, Any]:
    """One variant on ``device`` against the eager CPU step on the same weights, gradients and rounding noise
    (``momentum_dtype``: float32, bfloat16 or int8)."""
    import torch

    from bso_lightning.nn.packed import PackedBinaryParameter, binary_signs
    from bso_lightning.optim import BSO, TBSO

    cls = {"BSO": BSO, "TBSO": TBSO}[cls_name]
    gen = torch.Generator().manual_seed(seed)
    signs = [(torch.randint(0, 2, s, generator=gen) * 2 - 1).float() for s in shapes]
    grads = [[torch.randn(s, generator=gen) * 1e-3 for s in shapes] for _ in range(steps + 3)]

    def make(dev: str, fused: bool):
        params = [PackedBinaryParameter.from_signs(w.to(dev)) if storage == "packed"
                  else torch.nn.Parameter(w.to(dev).clone()) for w in signs]
        return params, cls(params, fused=fused, momentum_dtype=momentum_dtype, **_optimizer_kwargs(cls_name))

    def set_grads(params, step_grads, dev):
        for p, g in zip(params, step_grads):
            if storage == "packed":
                p.packed_grad = g.to(dev)
            else:
                p.grad = g.to(dev)

    ref_params, ref = make("cpu", False)
    params, opt = make(device, path == "compiled")
    recorded: list[Any] = []
    ref_noise = ref._rounding_noise
    ref._rounding_noise = lambda ps: recorded.append(ref_noise(ps)) or recorded[-1]
    opt._rounding_noise = lambda ps: None if recorded[-1] is None else [n.to(device) for n in recorded[-1]]
    mismatched = flip_count_diffs = flipped = 0
    momentum_rel = v_rel = 0.0
    first_step_s = None
    for step in range(steps):
        t = step % 3
        set_grads(ref_params, grads[step], "cpu")
        set_grads(params, grads[step], device)
        ref.step(time_step=t)
        start = time.perf_counter()
        opt.step(time_step=t)
        synchronizer(device)()
        if first_step_s is None:
            first_step_s = time.perf_counter() - start
        for p_ref, p in zip(ref_params, params):
            a, b = binary_signs(p_ref), binary_signs(p).cpu()
            mismatched += int((a != b).sum())
            m_ref, m = momentum_float32(ref.state[p_ref]), momentum_float32(opt.state[p]).cpu()
            scale = float(m_ref.abs().max()) or 1.0
            momentum_rel = max(momentum_rel, float((m_ref - m).abs().max()) / scale)
            if "v" in ref.state[p_ref]:
                v_ref, v = ref.state[p_ref]["v"], opt.state[p]["v"].cpu()
                v_rel = max(v_rel, float(((v_ref - v).abs() / v_ref.abs().clamp_min(1e-30)).max()))
        flip_count_diffs += int((ref.flip_counts() != opt.flip_counts().cpu()).sum())
        flipped += int(ref.flip_counts().sum())
    total = sum(w.numel() for w in signs) * steps
    # float32: its last bits; bfloat16: one step of its 8-bit mantissa; int8: one code of 127 per block
    tolerance = {"float32": 1e-5, "bfloat16": 2.0 ** -7, "int8": 1.0 / 127}[momentum_dtype]
    result = {"optimizer": cls_name, "storage": storage, "momentum_dtype": momentum_dtype, "path": path,
              "steps": steps, "flipped_fraction": flipped / total, "weights_differing": mismatched,
              "flip_count_differences": flip_count_diffs, "momentum_max_rel_diff": momentum_rel,
              "v_max_rel_diff": v_rel if cls_name == "TBSO" else None, "momentum_tolerance": tolerance,
              "first_step_s": first_step_s}
    result["same"] = mismatched == 0 and flip_count_diffs == 0 and momentum_rel <= tolerance and flipped > 0

    # the device's own rounding noise from here on (no host copies): syncs and kernels of a steady-state step
    del opt._rounding_noise
    set_grads(params, grads[steps], device)
    opt.step(time_step=0)  # first use of the device's generator, outside the counted steps

    device_grads_ready = [[g.to(device) for g in gs] for gs in grads[steps + 1:]]

    def steady_step() -> None:
        for p, g in zip(params, device_grads_ready[0]):
            if storage == "packed":
                p.packed_grad = g
            else:
                p.grad = g
        opt.step(time_step=1)

    result["host_syncs_per_step"] = count_syncs(steady_step, device)
    result["device_work_per_step"] = count_device_work(steady_step, device)
    return result


def part_correctness(part: dict[str, Any], ctx: dict[str, Any]) -> None:
    args, s, clock, device = ctx["args"], ctx["settings"], ctx["clock"], ctx["device"]
    cases = part.setdefault("cases", [])
    # eager ones first (fast), then the compiled ones, the CUDA default (T-BSO, packed, float32) first
    compiled = [("TBSO", "packed", "float32"), ("TBSO", "packed", "bfloat16"), ("TBSO", "dense", "float32"),
                ("BSO", "packed", "float32"), ("BSO", "dense", "float32"), ("TBSO", "dense", "bfloat16"),
                ("BSO", "packed", "bfloat16"), ("BSO", "dense", "bfloat16"), ("TBSO", "packed", "int8"),
                ("BSO", "dense", "int8")]
    variants = [(*v, "eager") for v in compiled] + [(*v, "compiled") for v in compiled]
    shapes = binary_shapes(s["step_arch"], s["step_width"])
    part["shapes"] = [list(x) for x in shapes]
    if args.smoke:
        part["notes"] = ["--smoke: the `compiled` rows run the same per-tensor functions uncompiled"]
    tests = start_cuda_tests(args) if not args.no_tests else None
    test_reserve = 5.0 if tests else 0.0
    complete = True
    with uncompiled_step(args.smoke):
        for variant in variants:
            clock.check()
            if clock.left() < test_reserve + 5:
                complete = False
                part.setdefault("notes", []).append(f"time budget ran out after {len(cases)} of {len(variants)} "
                                                   "variants")
                break
            cases.append(step_case(*variant, device=device, shapes=shapes, steps=s["correctness_steps"]))
            ctx["report"].write()
    part["all_same"] = all(c["same"] for c in cases) if cases else None
    syncs = [c["host_syncs_per_step"] for c in cases if c["host_syncs_per_step"] is not None]
    part["no_host_sync"] = all(n == 0 for n in syncs) if syncs else None
    part["tests"] = finish_cuda_tests(tests, clock.left() - 1) if tests else {"status": "skipped (--no-tests)"}
    ok = part["all_same"] is not False and part["no_host_sync"] is not False and part["tests"].get("status") in (
        "passed", "skipped (no CUDA)", "skipped (--no-tests)")
    part["status"] = ("passed" if complete else "incomplete") if ok else "failed"


def cuda_test_files() -> list[str]:
    """The test files that use the ``cuda`` marker (collecting only them saves collecting the whole suite)."""
    files = sorted(p for p in (_common.ROOT / "tests").rglob("test_*.py") if "pytest.mark.cuda" in p.read_text())
    return [str(p.relative_to(_common.ROOT)) for p in files] or ["tests"]


def start_cuda_tests(args) -> tuple[subprocess.Popen, list[str], float]:
    """Start ``pytest -m cuda`` in a subprocess; it runs beside the variants of part a."""
    smoke = ["--noconftest", "-p", "no:hypothesispytest"] if args.smoke else []  # (start-up time)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "-o", "addopts=",
           "-W", "ignore::DeprecationWarning", *smoke, *args.tests]
    env = {**os.environ, "WANDB_MODE": "offline", "CI": "true"}
    proc = subprocess.Popen(cmd, cwd=_common.ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    return proc, cmd, time.perf_counter()


def finish_cuda_tests(started: tuple[subprocess.Popen, list[str], float], timeout: float) -> dict[str, Any]:
    """Wait for the ``cuda``-marked tests (at most ``timeout`` s; then they are stopped) and summarise them."""
    proc, cmd, start = started
    command = "python " + " ".join(cmd[1:])
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return {"status": "timed out", "command": command, "timeout_s": round(timeout),
                "output_tail": (out or "")[-1500:]}
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", out)}
    summary = next((line for line in reversed(out.splitlines()) if re.search(r"\d+ (passed|skipped|failed)", line)),
                   "")
    if proc.returncode == 0 and counts.get("passed", 0) > 0:
        status = "passed"
    elif proc.returncode == 0 and counts.get("skipped", 0) > 0 and not counts.get("passed"):
        status = "skipped (no CUDA)"
    else:
        status = "failed"
    return {"status": status, "command": command, "exit_code": proc.returncode, "counts": counts,
            "summary": summary.strip("= "), "seconds": round(time.perf_counter() - start, 1),
            "output_tail": out[-3000:] if status == "failed" else ""}


# --------------------------------------------------------------------------- b. memory


def _memory_module():
    import importlib.util

    if "memory_vs_timesteps" not in sys.modules:
        spec = importlib.util.spec_from_file_location("memory_vs_timesteps",
                                                      Path(__file__).resolve().parent / "memory_vs_timesteps.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["memory_vs_timesteps"] = module
    return sys.modules["memory_vs_timesteps"]


def callback_reading(method: str, time_steps: int, s: dict[str, Any], device: str) -> dict[str, Any]:
    """The same iteration as the direct reading, logged by ``MemoryCallback`` alone: its second epoch of one batch
    (the first one creates the optimizer state and compiles, as the direct reading's first batch does)."""
    from bso_lightning.callbacks import MemoryCallback

    task, loader = _memory_module().task_and_loader(method, time_steps, s["arch"], s["batch_size"], s["image_size"], 1,
                                                    width=s["width"], lr_scheduler=_common.cosine_over(2))
    callback = MemoryCallback()
    trainer = _common.make_trainer(max_epochs=2, accelerator="gpu" if device == "cuda" else "cpu",
                                   limit_train_batches=1, limit_val_batches=0, callbacks=[callback])
    trainer.fit(task, train_dataloaders=loader)
    metrics = dict(callback.last_metrics)
    del task, trainer
    free_memory(device)
    return metrics


def part_memory(part: dict[str, Any], ctx: dict[str, Any]) -> None:
    s, clock, device = ctx["settings"], ctx["clock"], ctx["device"]
    mem = _memory_module()
    rows = part.setdefault("results", [])
    key = memory_key(device)
    part["figure"] = ("torch.cuda.max_memory_allocated during the iteration" if device == "cuda" else
                      "state + autograd-graph peak (no CUDA: persistent_state_bytes + AutogradMemoryMeter)")
    part["setting"] = (f"{s['arch']}, {s['image_size']}×{s['image_size']} input, batch {s['batch_size']}, "
                       f"{device}, library defaults per method, measured on training batch 2 of 2")
    longest = 0.0
    methods = list(METHODS)

    def measure_all(time_steps: list[int], label: str) -> bool:
        nonlocal longest
        for t in time_steps:
            for m in methods:
                clock.check()
                if clock.left() < 1.5 * longest + 1:
                    part.setdefault("notes", []).append(f"{label}: time budget ran out before {METHODS[m]} T={t}")
                    return False
                start = time.perf_counter()
                with uncompiled_step(ctx["args"].smoke):
                    r = mem.measure(m, t, s["arch"], s["batch_size"], s["image_size"], 2, device, width=s["width"])
                r["seconds"] = time.perf_counter() - start
                longest = max(longest, r["seconds"])
                rows.append(r)
                free_memory(device)
                ctx["report"].write()
        return True

    complete = measure_all(s["time_steps"], "grid")
    # MemoryCallback against the direct reading (each method at the middle T of the grid)
    checks = part.setdefault("callback_check", [])
    t_check = 4 if 4 in s["time_steps"] else s["time_steps"][-1]
    direct = {r["method"]: r for r in rows if r["time_steps"] == t_check}
    for m in methods:
        if m not in direct:
            continue
        clock.check()
        if clock.left() < 1.5 * longest + 1:
            part.setdefault("notes", []).append(f"callback check: time budget ran out before {METHODS[m]}")
            complete = False
            break
        with uncompiled_step(ctx["args"].smoke):
            metrics = callback_reading(m, t_check, s, device)
        logged = metrics.get("memory/cuda_peak_bytes" if device == "cuda" else "memory/peak_train_bytes")
        want = direct[m][key]
        rel = abs(logged - want) / want if logged is not None and want else None
        checks.append({"method": m, "time_steps": t_check, "direct": want, "callback": logged, "rel_diff": rel,
                       "agree": rel is not None and rel <= CALLBACK_TOLERANCE})
        ctx["report"].write()
    if complete and s["extra_time_steps"]:
        measure_all(s["extra_time_steps"], "extra T")
    agree = all(c["agree"] for c in checks)
    complete = complete and len(checks) == len(methods)
    part["callback_agrees"] = agree if checks else None
    part["status"] = ("measured" if complete else "incomplete") if agree else "failed"


# --------------------------------------------------------------------------- c. throughput


THROUGHPUT_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "T-BSO eager, dense": ("tbso", dict(optimizer={"init_args": {"fused": False}}, weight_storage="dense")),
    "T-BSO eager, packed": ("tbso", dict(optimizer={"init_args": {"fused": False}}, weight_storage="packed")),
    "T-BSO compiled, dense": ("tbso", dict(optimizer={"init_args": {"fused": True}}, weight_storage="dense")),
    "T-BSO compiled, packed": ("tbso", dict(optimizer={"init_args": {"fused": True}}, weight_storage="packed")),
    "T-BSO compiled, packed, bf16 momentum": ("tbso", dict(
        optimizer={"init_args": {"fused": True, "momentum_dtype": "bfloat16"}}, weight_storage="packed")),
    "T-BSO compiled, packed, bf16 momentum + bf16 saved activations": ("tbso", dict(
        optimizer={"init_args": {"fused": True, "momentum_dtype": "bfloat16"}}, weight_storage="packed",
        loop={"saved_activation_dtype": "bfloat16"})),
    "OTTT-FP": ("ottt_fp", {}),
}


def iteration_throughput(method: str, overrides: dict[str, Any], s: dict[str, Any], device: str) -> dict[str, Any]:
    """Images/s of whole training iterations (all T time steps of a batch), after ``warmup`` iterations."""
    import lightning as L

    sync = synchronizer(device)
    batches = s["warmup"] + s["timed"]

    class BatchTimer(L.Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            sync()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            sync()
            self.seconds.append(time.perf_counter() - self.start)

    task, loader = _memory_module().task_and_loader(method, s["throughput_time_steps"], s["arch"], s["batch_size"],
                                                    s["image_size"], batches, width=s["width"], **overrides)
    timer = BatchTimer()
    trainer = _common.make_trainer(max_epochs=1, accelerator="gpu" if device == "cuda" else "cpu",
                                   limit_train_batches=batches, limit_val_batches=0, callbacks=[timer])
    trainer.fit(task, train_dataloaders=loader)
    timed = timer.seconds[s["warmup"]:]
    median = statistics.median(timed)
    del task, trainer
    free_memory(device)
    return {"images_per_s": s["batch_size"] / median, "iteration_ms": 1000 * median,
            "first_iteration_s": timer.seconds[0], "timed_iterations": len(timed)}


def step_alone(s: dict[str, Any], device: str, clock: Clock, longest: list[float]) -> list[dict[str, Any]]:
    """The optimizer step alone on the model's binary weights (same gradients) against SGD's, with kernels/step."""
    import torch

    from bso_lightning.nn.packed import PackedBinaryParameter
    from bso_lightning.optim import BSO, TBSO

    shapes = binary_shapes(s["step_arch"], s["step_width"])
    gen = torch.Generator().manual_seed(0)
    signs = [(torch.randint(0, 2, sh, generator=gen) * 2 - 1).float().to(device) for sh in shapes]
    grads = [(torch.randn(sh, generator=gen) * 1e-3).to(device) for sh in shapes]

    def dense():
        ps = [torch.nn.Parameter(w.clone()) for w in signs]
        for p, g in zip(ps, grads):
            p.grad = g
        return ps

    def packed():
        ps = [PackedBinaryParameter.from_signs(w) for w in signs]
        for p, g in zip(ps, grads):
            p.packed_grad = g
        return ps

    def tbso_step(opt):
        return lambda: opt.step(time_step=1)

    variants: dict[str, Callable[[], Callable[[], None]]] = {
        "SGD(momentum=0.9, foreach=True)": lambda: torch.optim.SGD(dense(), lr=0.1, momentum=0.9, foreach=True).step,
        "SGD(momentum=0.9, fused=True)": lambda: torch.optim.SGD(dense(), lr=0.1, momentum=0.9, fused=True).step,
        "BSO eager, dense": lambda: BSO(dense(), fused=False).step,
        "BSO compiled, dense": lambda: BSO(dense(), fused=True).step,
        "T-BSO eager, dense": lambda: tbso_step(TBSO(dense(), fused=False)),
        "T-BSO compiled, dense": lambda: tbso_step(TBSO(dense(), fused=True)),
        "T-BSO eager, packed": lambda: tbso_step(TBSO(packed(), fused=False)),
        "T-BSO compiled, packed": lambda: tbso_step(TBSO(packed(), fused=True)),
        "T-BSO compiled, packed, bf16 momentum": lambda: tbso_step(TBSO(packed(), fused=True,
                                                                         momentum_dtype="bfloat16")),
    }
    sync = synchronizer(device)
    rows = []
    for name, make in variants.items():
        clock.check()
        if clock.left() < 1.5 * max(longest) + 1:
            rows.append({"variant": name, "error": "not run: time budget ran out"})
            continue
        start = time.perf_counter()
        row: dict[str, Any] = {"variant": name}
        try:
            step = make()
            for _ in range(3):  # (the first compiles)
                step()
            sync()
            times = []
            for _ in range(s["step_reps"]):
                t0 = time.perf_counter()
                step()
                sync()
                times.append(time.perf_counter() - t0)
            row["step_ms"] = 1000 * statistics.median(times)
            row["device_work_per_step"] = count_device_work(step, device)
        except Exception as error:  # e.g. SGD(fused=True) where this torch lacks it
            row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        longest.append(time.perf_counter() - start)
        rows.append(row)
        free_memory(device)
    sgd = next((r.get("step_ms") for r in rows if r["variant"].startswith("SGD(momentum=0.9, foreach")), None)
    for r in rows:
        if "step_ms" in r and sgd:
            r["ratio_to_sgd_foreach"] = r["step_ms"] / sgd
    return rows


def part_throughput(part: dict[str, Any], ctx: dict[str, Any]) -> None:
    s, clock, device = ctx["settings"], ctx["clock"], ctx["device"]
    rows = part.setdefault("iterations", [])
    part["setting"] = (f"{s['arch']}, {s['image_size']}×{s['image_size']} input, batch {s['batch_size']}, "
                       f"T = {s['throughput_time_steps']}, {device}; median of {s['timed']} iterations after "
                       f"{s['warmup']} warm-up iterations (the first compiles)")
    longest = [0.0]
    complete = True
    with uncompiled_step(ctx["args"].smoke):
        for name, (method, overrides) in THROUGHPUT_CONFIGS.items():
            clock.check()
            if clock.left() < 1.5 * max(longest) + 1 + 0.25 * SHARES["c"] * ctx["settings"]["deadline"]:
                rows.append({"config": name, "error": "not run: time budget ran out"})
                complete = False
                continue
            start = time.perf_counter()
            row = {"config": name, **iteration_throughput(method, overrides, s, device)}
            longest.append(time.perf_counter() - start)
            rows.append(row)
            ctx["report"].write()
        part["step_alone"] = step_alone(s, device, clock, longest)
    complete = complete and not any(r.get("error", "").startswith("not run") for r in part["step_alone"])
    part["status"] = "measured" if complete else "incomplete"


# --------------------------------------------------------------------------- d. quick start


def run_cli(cmd: list[str], cwd: Path, timeout: float, in_process: bool) -> str:
    """Run ``bso-lightning <cmd>``: its console script in a fresh process (what a user types), or, ``in_process``,
    its entry function here (``--smoke``: saves the interpreter start). Returns its output; raises if it failed."""
    if in_process:
        import io

        from bso_lightning.cli import main as cli_main

        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer):
                cli_main(cmd)
        except SystemExit as error:
            raise RuntimeError(f"bso-lightning {' '.join(cmd)} exited with {error.code}") from error
        return buffer.getvalue()
    import quickstart_time

    env = {**os.environ, "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([*quickstart_time.console_script(), *cmd], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"the quick start exited with {proc.returncode}:\n{proc.stderr[-2500:]}")
    return proc.stdout + proc.stderr


def part_quickstart(part: dict[str, Any], ctx: dict[str, Any]) -> None:
    import quickstart_time

    s, clock, device = ctx["settings"], ctx["clock"], ctx["device"]
    root = Path(tempfile.mkdtemp(prefix="bso_gpu_check_quickstart_"))
    extra = [f"--trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", "--trainer.devices=1", *s["quickstart"]]
    cmd = ["fit", "--trainer.logger=CSVLogger", f"--trainer.logger.save_dir={root}",
           f"--trainer.default_root_dir={root}", quickstart_time.TIMER, *extra]
    part["command"] = "bso-lightning fit " + " ".join(extra)
    part["in_process"] = bool(ctx["args"].smoke)
    timeout = max(5.0, clock.left() - 2)
    start = time.perf_counter()
    try:
        output = run_cli(cmd, root, timeout, in_process=ctx["args"].smoke)
        part["command_s"] = time.perf_counter() - start
        match = re.search(r"QUICKSTART_TIMER fit\+test ([0-9.]+)", output)
        part["fit_test_s"] = float(match.group(1)) if match else None
        part["test_acc"] = quickstart_time.read_test_acc(root)
    except subprocess.TimeoutExpired:
        part["status"] = "incomplete"
        part["error"] = f"not finished within its time budget ({timeout:.0f} s)"
        return
    finally:
        shutil.rmtree(root, ignore_errors=True)
    part["reaches_target"] = part["test_acc"] >= QUICKSTART_TARGET
    part["status"] = "measured" if part["reaches_target"] or ctx["args"].smoke else "failed"


# --------------------------------------------------------------------------- main


def run_part(key: str, fn: Callable[[dict[str, Any], dict[str, Any]], None], ctx: dict[str, Any]) -> bool:
    """Run one part within its budget; record its failure instead of raising. False once the deadline passed."""
    clock, report = ctx["clock"], ctx["report"]
    part = report.part(key)
    part.clear()
    part["status"] = "running"
    budget = SHARES[key] * ctx["settings"]["deadline"] + ctx.get("carry", 0.0)
    clock.part_end = min(clock.deadline, time.monotonic() + budget)
    part["budget_s"] = round(budget)
    start = time.perf_counter()
    print(f"[{clock.elapsed():5.0f} s] part {key}. {PARTS[key]} (budget {budget:.0f} s)", flush=True)
    carry_on = True
    try:
        fn(part, ctx)
    except Deadline:
        part["status"] = "incomplete"
        part["error"] = "stopped at the global deadline"
        carry_on = False
    except Exception as error:  # recorded, and the next part runs
        part["status"] = "error"
        part["error"] = error_summary(error)
        print(part["error"], file=sys.stderr, flush=True)
    finally:
        part["seconds"] = time.perf_counter() - start
        ctx["carry"] = max(0.0, clock.part_end - time.monotonic())
        report.write()
    print(f"[{clock.elapsed():5.0f} s]   -> {part['status']}", flush=True)
    return carry_on


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda (cpu with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, seconds; figures mean nothing")
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS))
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for the whole check (default 465 = 7 min 45 s; 90 with --smoke)")
    parser.add_argument("--arch", default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--time-steps", type=int, nargs="+", default=None, help="T of the memory part")
    parser.add_argument("--tests", nargs="+", default=None,
                        help="where pytest looks for the cuda-marked tests (default: the test files that use the "
                             f"marker; with --smoke only {SMOKE_TESTS})")
    parser.add_argument("--no-tests", action="store_true", help="do not run the cuda-marked tests")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for {NAME}.md/json (default {_common.RESULTS_DIR.relative_to(_common.ROOT)}; "
                             "none with --smoke)")
    args = parser.parse_args(argv)
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cpu" if args.smoke else "cuda")
    if args.tests is None:
        args.tests = [SMOKE_TESTS] if args.smoke else cuda_test_files()
    settings = settings_for(args)
    out = args.out if args.out is not None else (None if args.smoke else _common.RESULTS_DIR)
    _common.quiet_lightning()
    info = {**_common.machine_info(), **gpu_info(device if torch.cuda.is_available() else "cpu")}
    command = _common.command_line() if argv is None else " ".join(["python benchmarks/gpu_check.py", *argv])
    report = Report(out, info, settings, device, command)
    if device == "cuda" and not torch.cuda.is_available():
        for key in args.parts:
            report.part(key).update(status="error", error="no CUDA device visible to torch "
                                    f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        report.data["finished"] = True
        report.write()
        print(f"{NAME}: no CUDA device; nothing measured", file=sys.stderr)
        return report.data
    clock = Clock(settings["deadline"])
    ctx = {"args": args, "settings": settings, "clock": clock, "device": device, "report": report}
    print(f"{NAME}: {device}, deadline {settings['deadline']:.0f} s, parts {' '.join(args.parts)}", flush=True)
    report.write()
    functions = {"a": part_correctness, "b": part_memory, "c": part_throughput, "d": part_quickstart}
    with deadline_alarm(settings["deadline"], report, script=__name__ == "__main__"):
        for key in args.parts:
            if not run_part(key, functions[key], ctx):
                break
    report.data["total_seconds"] = clock.elapsed()
    report.data["finished"] = True
    report.write()
    print("\n" + render_markdown(report.data), flush=True)
    return report.data


@contextlib.contextmanager
def deadline_alarm(seconds: float, report: Report, script: bool):
    """As a script: SIGALRM at the deadline raises :class:`Deadline` in the measuring code, and a last resort 30 s
    later writes the report and exits (a device call that never returns). Called in-process (the tests), only the
    parts' own checks of the clock apply (the alarm would replace pytest-timeout's)."""
    use_alarm = script and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    previous = None
    if use_alarm:
        def on_alarm(signum, frame):
            raise Deadline("global deadline reached")
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds + 1)
    backstop = None
    if script:
        def last_resort():
            report.data["note"] = "the process was ended 30 s after the deadline (a call did not return)"
            report.write()
            os._exit(3)
        backstop = threading.Timer(seconds + 30, last_resort)
        backstop.daemon = True
        backstop.start()
    try:
        yield
    except Deadline:
        pass
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        if backstop is not None:
            backstop.cancel()


if __name__ == "__main__":
    os.environ.setdefault("WANDB_MODE", "offline")  # a GPU machine may have no wandb login
    data = main()
    bad = [name for name, p in data["parts"].items() if p.get("status") in ("error", "failed")]
    sys.exit(1 if bad else 0)
