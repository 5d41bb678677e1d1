"""Binary weights as bits: persistent bytes per binary weight, measured peak memory of one training iteration,
iteration time and accuracy — dense float32 storage against packed storage, side by side in one run.

Configurations (all T-BSO, realtime update; the library's names):

* ``dense``: ``weight_storage: dense``, float32 momentum, ordinary step after each backward (the layout of the
  library before packing, and of the authors' code: float32 ±1 + float32 momentum);
* ``packed``: ``weight_storage: packed`` (1 bit per weight), float32 momentum, each binary tensor stepped inside
  the backward — the plain Python loop of README (``with binary_opt.stepping_in_backward(time_step=t):
  loss.backward()``), which is what ``OnlineClassifier`` does with ``step_in_backward: true``;
* ``packed_bf16`` / ``packed_int8``: the same with a bfloat16 / int8 momentum (stochastic rounding);
* ``packed_bf16_act``: packed, bfloat16 momentum and bfloat16 saved activations.

What is measured:

1. Persistent bytes per binary weight: everything the binary optimizer keeps between steps (weights, momentum,
   block scales, v, counters, rounding noise, step buffers, gradients: ``BinaryOptimizer.memory_bytes``), after one
   iteration; against latent float32 weights + Adam (BPTT with latent weights).
2. Peak memory of one iteration (T time steps) of VGG-11 (CIFAR-10 shapes) at batch 1 / 32 / 128, each in a fresh
   process: on CPU the growth of the peak resident set size over the process before the model was built
   (``VmHWM`` reset through ``/proc/self/clear_refs`` after a warm-up iteration; glibc is told to return every
   allocation over 64 KiB to the system, so freed gradients and temporaries leave the resident set); on CUDA
   ``torch.cuda.max_memory_allocated`` over the same interval. Both see gradients, temporaries and the
   tensors autograd saves.
   The same fresh process then times ``--child-reps`` more iterations (median): seconds per iteration per batch.
3. Iteration time packed ÷ dense (batch 32, interleaved repetitions in one process, median).
4. Accuracy: the quick start (``configs/quickstart.yaml``) for 5 seeds per configuration.

    python benchmarks/packed_memory.py --threads 1                  # everything (CPU); ~30 min on 2 cores
    python benchmarks/packed_memory.py --threads 1 --skip-accuracy  # memory and time only (~20 min)
    python benchmarks/packed_memory.py --threads 1 --accuracy-only --configs packed packed_int8 \
        --results-name packed_memory_accuracy_int8      # accuracy of some configurations only
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
    "packed_int8": {"weight_storage": "packed", "momentum_dtype": "int8", "step_in_backward": True},
    "packed_bf16_act": {"weight_storage": "packed", "momentum_dtype": "bfloat16", "step_in_backward": True,
                        "saved_activation_dtype": "bfloat16"},
}
#: Where each setting of CONFIGS is a classifier argument (``--model.init_args.<path>``).
CLI_PATHS = {"weight_storage": "weight_storage", "momentum_dtype": "optimizer.init_args.momentum_dtype",
             "step_in_backward": "loop.step_in_backward", "saved_activation_dtype": "loop.saved_activation_dtype"}
LABELS = {"dense": "dense ±1 float32 + float32 momentum (before; = the authors' layout)",
          "packed": "packed bits + float32 momentum (plain loop, stepping inside the backward)",
          "packed_bf16": "packed bits + bfloat16 momentum", "packed_int8": "packed bits + int8 momentum",
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
    binary.in_backward = config["step_in_backward"]
    binary.saved_activation_dtype = config.get("saved_activation_dtype", "float32")
    sgd = torch.optim.SGD(split.full_precision, lr=0.1, momentum=0.9)
    return model, binary, sgd


def iteration(model, binary, sgd, x, y, time_steps: int) -> None:
    """One batch of online training: T forward/backward/step rounds (``OnlineClassifier``'s realtime loop, written
    as README's plain loop)."""
    from bso_lightning.nn.saved_activations import compact_saved_activations

    with compact_saved_activations(binary.saved_activation_dtype):
        _iteration(model, binary, sgd, x, y, time_steps)


def _iteration(model, binary, sgd, x, y, time_steps: int) -> None:
    from spikingjelly.activation_based import functional

    from bso_lightning.tasks.loss import online_loss

    functional.reset_net(model)
    for t in range(time_steps):
        loss = online_loss(model(x), y, time_steps, 0.05)
        if binary.in_backward:
            with binary.stepping_in_backward(time_step=t):
                loss.backward()
        else:
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
    start = time.perf_counter()
    iteration(model, binary, sgd, x, y, spec["time_steps"])
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = _rss_bytes("VmHWM") - base
    seconds = [time.perf_counter() - start]
    sync = torch.cuda.synchronize if cuda else None
    seconds += [_common.timed(lambda: iteration(model, binary, sgd, x, y, spec["time_steps"]), sync)
                for _ in range(spec.get("child_reps", 0))]
    return {"peak_bytes": peak, "after_warmup_bytes": persistent, "iteration_seconds": statistics.median(seconds),
            "iteration_seconds_all": seconds}


def measure_peak(config: str, batch: int, args) -> dict[str, Any]:
    spec = {"config": config, "batch": batch, "arch": args.arch, "width": args.width, "num_classes": 10,
            "image_size": args.image_size, "time_steps": args.time_steps, "device": args.device,
            "threads": args.threads or 1, "child_reps": args.child_reps}
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
    """Bytes per binary weight that persist between steps: everything the binary optimizer keeps
    (``BinaryOptimizer.memory_bytes``: weights, momentum, block scales, v, counters, rounding noise, step buffers,
    gradients still alive)."""
    import torch

    out = {}
    for name in args.configs:
        config = CONFIGS[name]
        if name == "packed_bf16_act":
            continue  # (the same persistent state as packed_bf16)
        model, binary, sgd = build(config, args.arch, args.width, 10, "cpu")
        x = torch.rand(2, 3, args.image_size, args.image_size)
        iteration(model, binary, sgd, x, torch.randint(0, 10, (2,)), args.time_steps)
        params = binary.binary_parameters()
        n = sum(p.logical_shape.numel() if hasattr(p, "logical_shape") else p.numel() for p in params)
        out[name] = sum(binary.memory_bytes().values()) / n
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

def iteration_times(args, batch: int) -> dict[str, float]:
    """Median seconds per iteration of each configuration at ``batch``, repetitions interleaved in this process
    (same machine state, default malloc)."""
    import torch

    torch.manual_seed(0)
    x = torch.rand(batch, 3, args.image_size, args.image_size, device=args.device)
    y = torch.randint(0, 10, (batch,), device=args.device)
    built = {name: build(CONFIGS[name], args.arch, args.width, 10, args.device) for name in args.configs}
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    times: dict[str, list[float]] = {name: [] for name in args.configs}
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
    overrides = [f"--model.init_args.{CLI_PATHS[k]}={str(v).lower() if isinstance(v, bool) else v}"
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
    runs = [(c, s) for c in args.configs for s in args.seeds]
    for config, seed, acc in _common.run_parallel(accuracy_run, runs, args, jobs=args.jobs):
        accuracy.setdefault(config, []).append(acc)
        print(f"accuracy {config} seed {seed}: {acc:.2f}", flush=True)
    rows = []
    for c in args.configs:
        mean, std = _common.mean_std(accuracy[c])
        rows.append((LABELS[c], f"{mean:.2f} ± {std:.2f}", ", ".join(f"{a:.2f}" for a in sorted(accuracy[c]))))
    report.append(f"### Test accuracy, quick start (configs/quickstart.yaml), seeds {args.seeds}\n\n"
                  + markdown_table(["configuration", "mean ± std (%)", "runs"], rows))
    print(report[-1], flush=True)
    return accuracy


def time_tables(args, report: list[str]) -> dict[int, dict[str, float]]:
    """Interleaved iteration time per batch size in ``--time-batches``; one table each appended to ``report``."""
    times = {}
    for batch in args.time_batches:
        times[batch] = t = iteration_times(args, batch)
        rows = [(LABELS[c], f"{t[c]:.3f} s", f"{t[c] / t['dense']:.2f}") for c in args.configs]
        report.append(f"### Iteration time (batch {batch}, T = {args.time_steps}, median of {args.reps}, interleaved "
                      "in one process)\n\n" + markdown_table(["configuration", "s / iteration", "÷ dense"], rows))
        print(report[-1], flush=True)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--time-batches", type=int, nargs="*", default=[32],
                        help="batch sizes of the interleaved iteration timing")
    parser.add_argument("--time-only", action="store_true",
                        help="only the interleaved iteration timing (results file --results-name)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=1, help="accuracy runs in parallel processes")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--accuracy-only", action="store_true", help="only the accuracy runs (results file "
                        "--results-name)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                        help="configurations to run ('dense' is always measured for the memory ratios)")
    parser.add_argument("--child-reps", type=int, default=1,
                        help="iterations timed after the peak one in each fresh process (seconds per batch size)")
    parser.add_argument("--results-name", default=None,
                        help="results file name (default packed_memory, or packed_memory_accuracy)")
    _common.add_output_args(parser)
    args = parser.parse_args()
    if not args.accuracy_only and "dense" not in args.configs:
        args.configs = ["dense", *args.configs]
    if args.quick:
        args.arch, args.width, args.image_size, args.batches, args.reps = "small_cnn", 8, 16, [1, 8], 2
        args.time_batches, args.seeds, args.skip_accuracy = [8], [0], True
    _common.apply_threads(args)
    _common.quiet_lightning()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    info = _common.machine_info()
    report = [_common.report_header("Binary weights as bits: memory, time and accuracy", info)]

    if args.time_only:
        times = time_tables(args, report)
        _common.write_results(_common.output_dir(args), args.results_name or "packed_memory_time", "\n\n".join(report),
                              {"machine": info, "command": _common.command_line(), "iteration_seconds": times})
        return
    if args.accuracy_only:
        accuracy = accuracy_table(args, report)
        _common.write_results(_common.output_dir(args), args.results_name or "packed_memory_accuracy",
                              "\n\n".join(report),
                              {"machine": info, "command": _common.command_line(), "accuracy": accuracy})
        return
    per_weight = state_bytes(args)
    rows = [(LABELS[name], f"{per_weight[name]:.3f}") for name in args.configs if name in per_weight]
    rows.append(("latent float32 weights + Adam (BPTT-latent)", f"{per_weight['latent_adam']:.3f}"))
    report.append(f"### Persistent bytes per binary weight ({args.arch}, T = {args.time_steps})\n\n"
                  + markdown_table(["layout", "bytes / binary weight"], rows))
    print(report[-1], flush=True)

    peaks = {}
    what = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS growth (VmHWM)"
    for b in args.batches:
        for c in args.configs:
            peaks[(c, b)] = measure_peak(c, b, args)
            print(f"batch {b} {c}: peak {_common.fmt_mib(peaks[(c, b)]['peak_bytes'])} MiB, "
                  f"{peaks[(c, b)]['iteration_seconds']:.2f} s / iteration", flush=True)
        dense = peaks[("dense", b)]
        rows = [(LABELS[c], f"{per_weight.get(c, per_weight.get('packed_bf16', 0.0)):.3f}",
                 _common.fmt_mib(peaks[(c, b)]["peak_bytes"]), f"{peaks[(c, b)]['peak_bytes'] / dense['peak_bytes']:.2f}",
                 f"{peaks[(c, b)]['iteration_seconds']:.2f}",
                 f"{peaks[(c, b)]['iteration_seconds'] / dense['iteration_seconds']:.2f}") for c in args.configs]
        report.append(f"### Batch {b} ({args.arch}, T = {args.time_steps}, {args.device}): peak of one iteration "
                      f"({what} over the process before the model existed) and seconds per iteration (median of "
                      f"{args.child_reps + 1} in the same fresh process, where glibc returns every allocation over "
                      "64 KiB to the system: the configurations that allocate per layer page-fault more than they "
                      "would normally; the interleaved timing below is the speed comparison)\n\n"
                      + markdown_table(["configuration", "persistent B / binary weight", "peak MiB", "÷ dense",
                                        "s / iteration", "÷ dense"], rows))
        print(report[-1], flush=True)

    times = time_tables(args, report)

    accuracy = {} if args.skip_accuracy else accuracy_table(args, report)

    data = {"machine": info, "command": _common.command_line(), "bytes_per_binary_weight": per_weight,
            "peaks": {f"{c}@{b}": v for (c, b), v in peaks.items()}, "iteration_seconds": times,
            "accuracy": accuracy}
    _common.write_results(_common.output_dir(args), args.results_name or "packed_memory", "\n\n".join(report), data)


if __name__ == "__main__":
    main()
