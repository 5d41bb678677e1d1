"""Binary weights as bits: persistent bytes per binary weight, measured peak memory of one training iteration,
iteration time and accuracy — dense float32 storage against packed storage, side by side in one run.

Configurations (all T-BSO, realtime update; the library's names):

* ``dense``: ``weight_storage: dense``, float32 momentum, ordinary step after each backward (the layout of the
  library before packing, and of the authors' code: float32 ±1 + float32 momentum);
* ``packed``: ``weight_storage: packed`` (1 bit per weight), float32 momentum, ``step_in_backward``;
* ``packed_bf16``: packed, bfloat16 momentum (stochastic rounding), ``step_in_backward``.

What is measured:

1. Persistent bytes per binary weight: the binary tensors plus their optimizer state, after one step, counted
   tensor by tensor; against latent float32 weights + Adam (BPTT with latent weights).
2. Peak memory of one iteration (T time steps) of VGG-11 (CIFAR-10 shapes) at batch 1 / 32 / 128, each in a fresh
   process: on CPU the growth of the peak resident set size over the process before the model was built
   (``VmHWM`` reset through ``/proc/self/clear_refs`` after a warm-up iteration; glibc is told to return every
   allocation over 64 KiB to the system, so freed gradients and temporaries leave the resident set); on CUDA
   ``torch.cuda.max_memory_allocated`` over the same interval. Both see gradients, temporaries and the
   tensors autograd saves.
3. Iteration time packed ÷ dense (batch 32, interleaved repetitions in one process, median).
4. Accuracy: the quick start (``configs/quickstart.yaml``) for 5 seeds per configuration.

    python benchmarks/packed_memory.py --threads 1                  # everything (CPU); ~30 min on 2 cores
    python benchmarks/packed_memory.py --threads 1 --skip-accuracy  # memory and time only (~5 min)
    python benchmarks/packed_memory.py --device cuda                # the same on a GPU
    python benchmarks/packed_memory.py --quick                      # smoke test (small CNN, seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import markdown_table  # noqa: E402

CONFIGS: dict[str, dict[str, Any]] = {
    "dense": {"weight_storage": "dense", "momentum_dtype": "float32", "step_in_backward": False},
    "packed": {"weight_storage": "packed", "momentum_dtype": "float32", "step_in_backward": True},
    "packed_bf16": {"weight_storage": "packed", "momentum_dtype": "bfloat16", "step_in_backward": True},
    "packed_bf16_act": {"weight_storage": "packed", "momentum_dtype": "bfloat16", "step_in_backward": True,
                        "saved_activation_dtype": "bfloat16"},
}
LABELS = {"dense": "dense ±1 float32 + float32 momentum (before; = the authors' layout)",
          "packed": "packed bits + float32 momentum", "packed_bf16": "packed bits + bfloat16 momentum",
          "packed_bf16_act": "packed bits + bfloat16 momentum + bfloat16 saved activations"}


# --------------------------------------------------------------------------- one training iteration

def build(config: dict[str, Any], arch: str, width: int | None, num_classes: int, device: str):
    """Model, binary optimizer (T-BSO) and SGD as the online classifier builds them."""
    import torch

    from bso_lightning.models import build_model
    from bso_lightning.nn.layers import set_weight_storage_
    from bso_lightning.nn.routing import split_parameters
    from bso_lightning.optim import TBSO

    kwargs = {"width": width} if width else {}
    model = set_weight_storage_(build_model(arch, num_classes=num_classes, in_channels=3, **kwargs),
                                config["weight_storage"]).to(device)
    split = split_parameters(model)
    binary = TBSO(split.binary, momentum_dtype=config["momentum_dtype"])
    binary.step_in_backward(config["step_in_backward"])
    binary.saved_activation_dtype = config.get("saved_activation_dtype", "float32")
    sgd = torch.optim.SGD(split.full_precision, lr=0.1, momentum=0.9)
    return model, binary, sgd


def iteration(model, binary, sgd, x, y, time_steps: int) -> None:
    """One batch of online training: T forward/backward/step rounds (``OnlineClassifier``'s realtime loop)."""
    from bso_lightning.nn.saved_activations import compact_saved_activations

    with compact_saved_activations(binary.saved_activation_dtype):
        _iteration(model, binary, sgd, x, y, time_steps)


def _iteration(model, binary, sgd, x, y, time_steps: int) -> None:
    from spikingjelly.activation_based import functional

    from bso_lightning.tasks.loss import online_loss

    functional.reset_net(model)
    for t in range(time_steps):
        loss = online_loss(model(x), y, time_steps, 0.05)
        binary.set_backward_time_step(t)
        loss.backward()
        binary.step(time_step=t)
        sgd.step()
        binary.zero_grad(set_to_none=True)
        sgd.zero_grad(set_to_none=True)
    functional.reset_net(model)


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run in a fresh process: the peak memory of one iteration over the process before the model existed."""
    import torch

    torch.set_num_threads(spec["threads"])
    device = spec["device"]
    torch.manual_seed(0)
    x = torch.rand(spec["batch"], 3, spec["image_size"], spec["image_size"], device=device)
    y = torch.randint(0, spec["num_classes"], (spec["batch"],), device=device)
    cuda = device.startswith("cuda")
    # a throwaway run first: libraries, kernels and thread pools load lazily and must not count as training memory
    parts = build(CONFIGS[spec["config"]], spec["arch"], spec["width"], spec["num_classes"], device)
    iteration(*parts, x[:1], y[:1], spec["time_steps"])
    del parts
    import gc

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_bytes("VmRSS")
    model, binary, sgd = build(CONFIGS[spec["config"]], spec["arch"], spec["width"], spec["num_classes"], device)
    iteration(model, binary, sgd, x, y, spec["time_steps"])  # warm-up: optimizer state, workspaces
    persistent = (torch.cuda.memory_allocated() if cuda else _rss_bytes("VmRSS")) - base
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM <- VmRSS
    iteration(model, binary, sgd, x, y, spec["time_steps"])
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_bytes("VmHWM") - base
    return {"peak_bytes": peak, "after_warmup_bytes": persistent}


def measure_peak(config: str, batch: int, args) -> dict[str, Any]:
    spec = {"config": config, "batch": batch, "arch": args.arch, "width": args.width, "num_classes": 10,
            "image_size": args.image_size, "time_steps": args.time_steps, "device": args.device,
            "threads": args.threads or 1}
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0",
           "PYTHONPATH": str(_common.ROOT)}
    code = ("import json, sys; sys.path.insert(0, %r); import packed_memory as b; "
            "print('RESULT', json.dumps(b.peak_child(json.loads(sys.argv[1]))))" % str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], env=env, capture_output=True, text=True,
                         check=False)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"peak measurement {config} batch {batch} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


# --------------------------------------------------------------------------- persistent bytes per weight

def state_bytes(args) -> dict[str, float]:
    """Bytes per binary weight that persist between steps: the binary tensors + their optimizer state."""
    import torch

    out = {}
    for name, config in CONFIGS.items():
        if name == "packed_bf16_act":
            continue  # (the same persistent state as packed_bf16)
        model, binary, sgd = build(config, args.arch, args.width, 10, "cpu")
        x = torch.rand(2, 3, args.image_size, args.image_size)
        iteration(model, binary, sgd, x, torch.randint(0, 10, (2,)), args.time_steps)
        params = binary.binary_parameters()
        n = sum(p.logical_shape.numel() if hasattr(p, "logical_shape") else p.numel() for p in params)
        held = sum(p.numel() * p.element_size() for p in params)
        held += sum(v.numel() * v.element_size() for p in params for v in binary.state[p].values()
                    if torch.is_tensor(v))
        out[name] = held / n
    # latent float32 weights + Adam (BPTT-latent's layout): weight, exp_avg, exp_avg_sq (+ a step counter)
    model, _, _ = build(CONFIGS["dense"], args.arch, args.width, 10, "cpu")
    from bso_lightning.nn.routing import split_parameters

    latent = [torch.nn.Parameter(p.detach().clone()) for p in split_parameters(model).binary]
    adam = torch.optim.Adam(latent)
    for p in latent:
        p.grad = torch.zeros_like(p)
    adam.step()
    n = sum(p.numel() for p in latent)
    held = sum(p.numel() * p.element_size() for p in latent)
    held += sum(v.numel() * v.element_size() for p in latent for v in adam.state[p].values() if torch.is_tensor(v))
    out["latent_adam"] = held / n
    return out


# --------------------------------------------------------------------------- iteration time

def iteration_times(args) -> dict[str, float]:
    """Median seconds per iteration of each configuration, repetitions interleaved (same machine state)."""
    import torch

    torch.manual_seed(0)
    x = torch.rand(args.time_batch, 3, args.image_size, args.image_size, device=args.device)
    y = torch.randint(0, 10, (args.time_batch,), device=args.device)
    built = {name: build(cfg, args.arch, args.width, 10, args.device) for name, cfg in CONFIGS.items()}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for name, parts in built.items():
        iteration(*parts, x, y, args.time_steps)  # warm-up
    for _ in range(args.reps):
        for name, parts in built.items():
            times[name].append(_common.timed(lambda: iteration(*parts, x, y, args.time_steps), sync))
    return {name: statistics.median(v) for name, v in times.items()}


# --------------------------------------------------------------------------- accuracy

def accuracy_run(config: str, seed: int, args) -> tuple[str, int, float]:
    """The quick start (``configs/quickstart.yaml``) with ``config``'s storage options and ``seed``."""
    import tempfile

    from bso_lightning.cli import build_cli

    root = tempfile.mkdtemp(prefix=f"packed_memory_{config}_{seed}_")
    overrides = [f"--model.init_args.{k}={str(v).lower() if isinstance(v, bool) else v}"
                 for k, v in CONFIGS[config].items()]
    cli = build_cli(["fit", "--config", str(_common.ROOT / "configs" / "quickstart.yaml"), f"--seed_everything={seed}",
                     f"--trainer.default_root_dir={root}", "--trainer.logger=false",
                     "--trainer.enable_checkpointing=false",
                     "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                     "--trainer.callbacks=[]", *overrides])
    return config, seed, float(cli.trainer.callback_metrics["test/acc"]) * 100


def accuracy_table(args, report: list[str]) -> dict[str, list[float]]:
    """Run the quick start for every configuration and seed; append the table to ``report``."""
    accuracy: dict[str, list[float]] = {}
    runs = [(c, s) for c in CONFIGS for s in args.seeds]
    for config, seed, acc in _common.run_parallel(accuracy_run, runs, args, jobs=args.jobs):
        accuracy.setdefault(config, []).append(acc)
        print(f"accuracy {config} seed {seed}: {acc:.2f}", flush=True)
    rows = []
    for c in CONFIGS:
        mean, std = _common.mean_std(accuracy[c])
        rows.append((LABELS[c], f"{mean:.2f} ± {std:.2f}", ", ".join(f"{a:.2f}" for a in sorted(accuracy[c]))))
    report.append(f"### Test accuracy, quick start (configs/quickstart.yaml), seeds {args.seeds}\n\n"
                  + markdown_table(["configuration", "mean ± std (%)", "runs"], rows))
    print(report[-1], flush=True)
    return accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--time-batch", type=int, default=32)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=1, help="accuracy runs in parallel processes")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--accuracy-only", action="store_true", help="only the accuracy runs (results file "
                        "packed_memory_accuracy)")
    _common.add_output_args(parser)
    args = parser.parse_args()
    if args.quick:
        args.arch, args.width, args.image_size, args.batches, args.reps = "small_cnn", 8, 16, [1, 8], 2
        args.time_batch, args.seeds, args.skip_accuracy = 8, [0], True
    _common.apply_threads(args)
    _common.quiet_lightning()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    info = _common.machine_info()
    report = [_common.report_header("Binary weights as bits: memory, time and accuracy", info)]

    if args.accuracy_only:
        accuracy = accuracy_table(args, report)
        _common.write_results(_common.output_dir(args), "packed_memory_accuracy", "\n\n".join(report),
                              {"machine": info, "command": _common.command_line(), "accuracy": accuracy})
        return
    per_weight = state_bytes(args)
    rows = [(LABELS[name], f"{per_weight[name]:.3f}") for name in CONFIGS if name in per_weight]
    rows.append(("latent float32 weights + Adam (BPTT-latent)", f"{per_weight['latent_adam']:.3f}"))
    report.append(f"### Persistent bytes per binary weight ({args.arch}, T = {args.time_steps})\n\n"
                  + markdown_table(["layout", "bytes / binary weight"], rows))
    print(report[-1], flush=True)

    peaks = {(c, b): measure_peak(c, b, args) for b in args.batches for c in CONFIGS}
    rows = []
    for b in args.batches:
        dense = peaks[("dense", b)]["peak_bytes"]
        for c in CONFIGS:
            peak = peaks[(c, b)]["peak_bytes"]
            rows.append((b, LABELS[c], _common.fmt_mib(peak), f"{peak / dense:.2f}"))
    what = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS growth (VmHWM)"
    report.append(f"### Peak memory of one iteration ({args.arch}, T = {args.time_steps}, {args.device}; {what} "
                  "over the process before the model existed)\n\n"
                  + markdown_table(["batch", "configuration", "peak", "÷ dense"], rows))
    print(report[-1], flush=True)

    times = iteration_times(args)
    rows = [(LABELS[c], f"{times[c] * 1e3:.0f} ms", f"{times[c] / times['dense']:.2f}") for c in CONFIGS]
    report.append(f"### Iteration time (batch {args.time_batch}, T = {args.time_steps}, median of {args.reps}, "
                  f"interleaved)\n\n" + markdown_table(["configuration", "time", "÷ dense"], rows))
    print(report[-1], flush=True)

    accuracy = {} if args.skip_accuracy else accuracy_table(args, report)

    data = {"machine": info, "command": _common.command_line(), "bytes_per_binary_weight": per_weight,
            "peaks": {f"{c}@{b}": v for (c, b), v in peaks.items()}, "iteration_seconds": times,
            "accuracy": accuracy}
    _common.write_results(_common.output_dir(args), "packed_memory", "\n\n".join(report), data)


if __name__ == "__main__":
    main()
