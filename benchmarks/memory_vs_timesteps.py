"""Peak training memory against the number of time steps T, per method (the paper's Figure 4).

One training step = all T time steps of one batch with the method's real update rule, run by the method's
LightningModule under ``Trainer.fit``: BSO/T-BSO and OTTT do T forward/backward/optimizer steps, BPTT does
T forwards and one backward through all of them. Every (method, T) runs in a fresh process (this script
with ``--worker``); it trains ``--steps`` batches and measures the last one (so optimizer state exists).

Figures (from ``bso_lightning.callbacks.memory``, the ones ``MemoryCallback`` logs):

* ``state`` — :func:`persistent_state_bytes`: parameters + gradients + buffers + optimizer state;
* ``graph`` — :class:`AutogradMemoryMeter` peak: bytes of tensors saved for backward during the batch
  (each storage once; the model's own parameters and buffers excluded);
* ``train`` = state + graph — the device-independent training-memory figure (the CPU column);
* ``cuda`` — ``torch.cuda.max_memory_allocated`` during the batch, on CUDA only.

    python benchmarks/memory_vs_timesteps.py --threads 1              # VGG-11, 32x32, batch 8, T = 1..16 (CPU)
    python benchmarks/memory_vs_timesteps.py --device cuda --batch-size 128   # the paper's setting, on a GPU
    python benchmarks/memory_vs_timesteps.py --quick                  # smoke test (small CNN, in-process)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import METHODS, fmt_mib, markdown_table  # noqa: E402

RESULT_PREFIX = "RESULT "


def task_and_loader(method: str, time_steps: int, arch: str, batch_size: int, image_size: int, batches: int,
                    seed: int = 0, width: Optional[int] = None, **overrides: Any):
    """The method's LightningModule (10 classes, 3 channels; ``overrides`` for its arguments) and a loader of
    ``batches`` random batches; seeded."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    _common.quiet_lightning()
    L.seed_everything(seed, verbose=False)
    arch_kwargs = {"width": width} if width is not None else None
    task = _common.make_task(method, arch, time_steps, num_classes=10, in_channels=3, arch_kwargs=arch_kwargs,
                             **{"lr_scheduler": _common.cosine_over(1), "bn_recalibration_batches": 0, **overrides})
    n = batch_size * batches
    data = TensorDataset(torch.rand(n, 3, image_size, image_size), torch.randint(0, 10, (n,)))
    return task, DataLoader(data, batch_size=batch_size, shuffle=False)


def measure(method: str, time_steps: int, arch: str, batch_size: int, image_size: int, steps: int,
            device: str, seed: int = 0, width: Optional[int] = None, **overrides: Any) -> dict[str, Any]:
    """Train ``steps`` batches of ``method`` at T = ``time_steps``; memory figures of the last batch."""
    import lightning as L
    import torch

    from bso_lightning.callbacks.memory import (
        AutogradMemoryMeter, cuda_peak_bytes, peak_rss_bytes, persistent_state_bytes,
    )

    task, loader = task_and_loader(method, time_steps, arch, batch_size, image_size, steps, seed, width, **overrides)
    cuda = device == "cuda"
    measured = steps - 1

    class Measure(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx != measured:
                return
            self.meter = AutogradMemoryMeter(exclude=pl_module)
            if cuda:
                torch.cuda.synchronize(pl_module.device)
                torch.cuda.reset_peak_memory_stats(pl_module.device)
            self.meter.__enter__()
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx != measured:
                return
            if cuda:
                torch.cuda.synchronize(pl_module.device)
                self.cuda = cuda_peak_bytes(pl_module.device)
            self.seconds = time.perf_counter() - self.start
            self.meter.__exit__(None, None, None)
            self.graph = self.meter.peak_bytes
            self.state = persistent_state_bytes(pl_module, trainer.optimizers)

    probe = Measure()
    trainer = _common.make_trainer(max_epochs=1, accelerator="gpu" if cuda else "cpu", limit_train_batches=steps,
                                   limit_val_batches=0, callbacks=[probe])
    trainer.fit(task, train_dataloaders=loader)
    return {
        "method": method, "time_steps": time_steps, "batch_size": batch_size, "image_size": image_size,
        "arch": arch, "device": device, "state_bytes": probe.state, "graph_peak_bytes": probe.graph,
        "train_peak_bytes": probe.state + probe.graph, "cuda_peak_bytes": getattr(probe, "cuda", None),
        "peak_rss_bytes": peak_rss_bytes(), "step_seconds": probe.seconds,
    }


def run_worker(args) -> dict[str, Any]:
    """Run one (method, T) in a fresh interpreter and parse its result line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--methods", args.methods[0],
           "--time-steps", str(args.time_steps[0]), *_shared_flags(args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {' '.join(cmd)} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def _shared_flags(args) -> list[str]:
    flags = ["--arch", args.arch, "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
             "--steps", str(args.steps), "--device", args.device]
    if args.width is not None:
        flags += ["--width", str(args.width)]
    if args.threads is not None:
        flags += ["--threads", str(args.threads)]
    return flags


def growth_lines(results: list[dict[str, Any]], key: str, methods: list[str], ts: list[int]) -> list[str]:
    lines = []
    lo, hi = min(ts), max(ts)
    for m in methods:
        by_t = {r["time_steps"]: r[key] for r in results if r["method"] == m and r.get(key) is not None}
        if lo in by_t and hi in by_t and by_t[lo]:
            ratio = by_t[hi] / by_t[lo]
            lines.append(f"{METHODS[m]}: {fmt_mib(by_t[lo])} → {fmt_mib(by_t[hi])} MiB from T = {lo} to T = {hi} "
                         f"({by_t[hi] - by_t[lo]:+,} bytes, {(ratio - 1) * 100:+.2f}%, ×{ratio:.2f})")
    return lines


def plot(results: list[dict[str, Any]], key: str, methods: list[str], ts: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    markers = {"bptt_latent": "o", "ottt_fp": "^", "bso": "s", "tbso": "D"}
    for m in methods:
        pts = sorted((r["time_steps"], r[key]) for r in results if r["method"] == m and r.get(key) is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] / 2**20 for p in pts], marker=markers.get(m, "o"), label=METHODS[m])
    ax.set_xscale("log", base=2)
    ax.set_xticks(ts)
    ax.set_xticklabels([str(t) for t in ts])
    ax.set_xlabel("time steps T")
    ax.set_ylabel("peak training memory (MiB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--time-steps", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--width", type=int, default=None, help="small_cnn width (ignored by vgg11)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2, help="training batches per run; the last one is measured")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--in-process", action="store_true",
                        help="measure every (method, T) in this process (default for --quick) instead of a fresh one")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    _common.apply_threads(args)
    if args.quick:
        args.arch, args.width, args.batch_size, args.image_size = "small_cnn", 8, 2, 16
        if args.time_steps == [1, 2, 4, 8, 16]:
            args.time_steps = [1, 2]
        args.in_process = True
    if args.device == "auto":
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.steps < 1 or min(args.time_steps) < 1:
        parser.error("--steps and every --time-steps must be >= 1")

    if args.worker:
        result = measure(args.methods[0], args.time_steps[0], args.arch, args.batch_size, args.image_size,
                         args.steps, args.device, width=args.width)
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return [result]

    info = _common.machine_info()
    results = []
    for t in args.time_steps:
        for m in args.methods:
            started = time.perf_counter()
            if args.in_process:
                r = measure(m, t, args.arch, args.batch_size, args.image_size, args.steps, args.device,
                            width=args.width)
            else:
                r = run_worker(argparse.Namespace(**{**vars(args), "methods": [m], "time_steps": [t]}))
            results.append(r)
            print(f"  {METHODS[m]:<22} T={t:<3} train {fmt_mib(r['train_peak_bytes'])} MiB "
                  f"(state {fmt_mib(r['state_bytes'])} + graph {fmt_mib(r['graph_peak_bytes'])})"
                  + (f", cuda {fmt_mib(r['cuda_peak_bytes'])} MiB" if r.get("cuda_peak_bytes") else "")
                  + f"  [{time.perf_counter() - started:.0f} s]", flush=True)

    ts = sorted(set(args.time_steps))
    key = "cuda_peak_bytes" if args.device == "cuda" else "train_peak_bytes"
    what = ("CUDA peak allocated (torch.cuda.max_memory_allocated)" if key == "cuda_peak_bytes" else
            "state + autograd-graph peak (persistent_state_bytes + AutogradMemoryMeter.peak_bytes)")

    def row(m, k):
        by_t = {r["time_steps"]: r[k] for r in results if r["method"] == m}
        return [METHODS[m], *(fmt_mib(by_t.get(t)) for t in ts)]

    headers = ["method", *(f"T={t}" for t in ts)]
    main_table = markdown_table(headers, [row(m, key) for m in args.methods])
    parts_table = markdown_table(
        ["method", "part", *(f"T={t}" for t in ts)],
        [[METHODS[m], part, *row(m, k)[1:]] for m in args.methods
         for part, k in (("state", "state_bytes"), ("graph", "graph_peak_bytes"))])
    setting = (f"{args.arch}{f' (width {args.width})' if args.width else ''}, {args.image_size}×{args.image_size} "
               f"input, batch {args.batch_size}, {args.device}, measured on training batch {args.steps} of {args.steps}")
    growth = growth_lines(results, key, args.methods, ts)
    text = "\n".join([
        _common.report_header("Peak training memory vs time steps", info),
        f"Setting: {setting}. Each (method, T) "
        + ("in this process." if args.in_process else "in a fresh process."),
        "", f"Peak training memory, MiB — {what}:", "", main_table, "",
        "Parts (MiB): state = parameters + gradients + buffers + optimizer state; graph = peak bytes saved for "
        "backward:", "", parts_table, "", "Growth:", "", *(f"- {g}" for g in growth),
    ])
    print("\n" + text, flush=True)
    out = _common.output_dir(args)
    if out is not None:
        png = out / "memory_vs_timesteps.png"
        plot(results, key, args.methods, ts, png, f"{setting}\n{what.split(' (')[0]}")
        text += f"\n\n![memory vs T]({png.name})\n"
        _common.write_results(out, "memory_vs_timesteps", text,
                              {"machine": info, "setting": vars(args) | {"out": str(args.out)}, "results": results})
    return results


if __name__ == "__main__":
    main()
