"""Persistent training state per method (weights, latent weights, optimizer state) — bytes per binary weight.

For each method the model (VGG-11 for CIFAR-10 by default) is trained for one batch by its LightningModule,
so every optimizer has its state; then the state is counted tensor by tensor. "Hidden weights" are the
weights that are binary in the BSO model (every conv but the first); the other methods hold real-valued
tensors in the same places (latent weights for BPTT, plain weights for OTTT). The total is
``bso_lightning.callbacks.memory.persistent_state_bytes`` (parameters + gradients + buffers + optimizer state).

Then, for the binary methods, every byte that persists between steps per binary weight, for each storage layout
(``BinaryOptimizer.memory_bytes``: weights, momentum, int8 block scales, v, counters, the rounding noise, the
eager step's buffers and any binary gradient still alive), after one batch of ``OnlineClassifier`` training with
that layout; and what a step holds besides while it runs (computed from the sizes).

    python benchmarks/state_bytes.py                  # VGG-11, CIFAR-10 shapes, T = 4
    python benchmarks/state_bytes.py --quick          # smoke test (small CNN)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import METHODS, fmt_mib, markdown_table  # noqa: E402


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def measure(method: str, args) -> dict[str, Any]:
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from bso_lightning.callbacks.memory import persistent_state_bytes
    from bso_lightning.models import build_model
    from bso_lightning.nn import BinaryLayer
    from bso_lightning.nn.latent import LatentBinaryLayer
    from bso_lightning.nn.packed import binary_numel

    arch_kwargs = {"width": args.width} if args.width else None
    ref = build_model(args.arch, num_classes=args.num_classes, in_channels=3, **(arch_kwargs or {}))
    hidden_names = {f"{name}.{suffix}" for name, m in ref.named_modules() if isinstance(m, BinaryLayer)
                    for suffix in ("weight", "weight_bits")}  # (dense or packed storage)

    L.seed_everything(0, verbose=False)
    task = _common.make_task(method, args.arch, args.time_steps, num_classes=args.num_classes, in_channels=3,
                             arch_kwargs=arch_kwargs, lr_scheduler=_common.cosine_over(1), bn_recalibration_batches=0)
    n = 2
    data = TensorDataset(torch.rand(n, 3, args.image_size, args.image_size), torch.randint(0, args.num_classes, (n,)))
    trainer = _common.make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=DataLoader(data, batch_size=n))
    optimizers = trainer.optimizers

    state_of: dict[int, int] = {}
    state_kinds: dict[str, int] = {}
    for opt in optimizers:
        for p, st in opt.state.items():
            for key, value in st.items():
                if torch.is_tensor(value):
                    state_of[id(p)] = state_of.get(id(p), 0) + _nbytes(value)
                    label = f"{type(opt).__name__}.{key}"
                    state_kinds[label] = state_kinds.get(label, 0) + _nbytes(value)

    hidden = {"weights": 0, "opt_state": 0, "count": 0}
    other = {"weights": 0, "opt_state": 0, "count": 0}
    grads = 0
    for name, p in task.model.named_parameters():
        part = hidden if name in hidden_names else other
        part["weights"] += _nbytes(p)
        part["opt_state"] += state_of.get(id(p), 0)
        part["count"] += binary_numel(p)
        grads += _nbytes(p) if p.requires_grad else 0
    buffers = sum(_nbytes(b) for b in task.model.buffers())
    cached = sum(_nbytes(m.__dict__["_binary_cache"][1]) for m in task.model.modules()
                 if isinstance(m, LatentBinaryLayer) and "_binary_cache" in m.__dict__)
    deploy_bits = (hidden["count"] * (32 if method == "ottt_fp" else 1)) + other["count"] * 32
    return {
        "method": method, "hidden_weights": hidden["count"], "hidden_weight_bytes": hidden["weights"],
        "hidden_opt_state_bytes": hidden["opt_state"], "other_params": other["count"],
        "other_weight_bytes": other["weights"], "other_opt_state_bytes": other["opt_state"],
        "gradient_bytes": grads, "buffer_bytes": buffers, "cached_binary_copy_bytes": cached,
        "persistent_state_bytes": persistent_state_bytes(task, optimizers), "state_by_kind": state_kinds,
        "deployed_bytes": (deploy_bits + 7) // 8,
        "bytes_per_hidden_weight": (hidden["weights"] + hidden["opt_state"]) / hidden["count"],
    }


#: Storage layouts of the binary methods: OnlineClassifier's weight_storage and the optimizer's momentum_dtype.
LAYOUTS: dict[str, dict[str, Any]] = {
    "dense ±1 float32 + float32 momentum (the authors' layout)": dict(weight_storage="dense",
                                                                       momentum_dtype="float32"),
    "packed bits + float32 momentum (default)": dict(weight_storage="packed", momentum_dtype="float32"),
    "packed bits + bfloat16 momentum": dict(weight_storage="packed", momentum_dtype="bfloat16"),
    "packed bits + int8 momentum": dict(weight_storage="packed", momentum_dtype="int8"),
}
KINDS = ("weights", "momentum", "momentum_scale", "v", "counters", "rounding_noise", "workspaces", "gradients")


def measure_layout(method: str, layout: dict[str, Any], args) -> dict[str, Any]:
    """Every byte the binary optimizer keeps between steps after one batch of training with ``layout``."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from bso_lightning.nn.packed import binary_numel
    from bso_lightning.optim import functional

    arch_kwargs = {"width": args.width} if args.width else None
    L.seed_everything(0, verbose=False)
    task = _common.make_task(method, args.arch, args.time_steps, num_classes=args.num_classes, in_channels=3,
                             arch_kwargs=arch_kwargs, lr_scheduler=_common.cosine_over(1), bn_recalibration_batches=0,
                             weight_storage=layout["weight_storage"],
                             optimizer={"init_args": {"momentum_dtype": layout["momentum_dtype"]}})
    data = TensorDataset(torch.rand(2, 3, args.image_size, args.image_size), torch.randint(0, args.num_classes, (2,)))
    trainer = _common.make_trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=DataLoader(data, batch_size=2))
    binary = trainer.optimizers[0]
    counted = binary.memory_bytes()
    sizes = [binary_numel(p) for p in binary.binary_parameters()]
    n = sum(sizes)
    chunk = min(max(sizes), functional.EAGER_CHUNK or max(sizes))
    per_entry = 4 + (4 if layout["momentum_dtype"] != "float32" else 0) + (1.5 if layout["weight_storage"] == "packed"
                                                                          else 0)
    return {"method": method, "layout": layout, "binary_weights": n, "bytes": counted,
            "bytes_per_weight": sum(counted.values()) / n,
            # while a step runs (computed): the eager step's buffers, and the binary gradients alive at once
            "step_buffers_bytes": chunk * per_entry, "step_gradient_bytes_in_backward": 4 * max(sizes),
            "step_gradient_bytes_after_backward": 4 * n}


def layouts_report(args) -> tuple[str, list[dict[str, Any]]]:
    results = [measure_layout(method, layout, args) for method in ("tbso", "bso") if method in args.methods
               for layout in LAYOUTS.values()]
    rows = []
    for r in results:
        n = r["binary_weights"]
        label = next(k for k, v in LAYOUTS.items() if v == r["layout"])
        rows.append([METHODS[r["method"]], label, *(f"{r['bytes'][k] / n:.4f}" for k in KINDS),
                     f"**{r['bytes_per_weight']:.3f}**", f"{_common.fmt_mib(sum(r['bytes'].values()))}",
                     f"{r['step_buffers_bytes'] / n:.3f} + {r['step_gradient_bytes_in_backward'] / n:.3f}"])
    table = markdown_table(["method", "layout", "weights", "momentum", "int8 scales", "v", "counters",
                            "rounding noise", "step buffers", "gradients", "total B / binary weight", "total MiB",
                            "held during a step (buffers + one layer's gradient)"], rows)
    text = ("### Every byte kept between steps, per binary weight, by layout\n\n"
            "After one batch of `OnlineClassifier` training (realtime, stepping inside the backward: no binary "
            "gradient outlives its layer's step). Counted tensor by tensor by `BinaryOptimizer.memory_bytes()`. "
            "The eager step's buffers are freed after each step (0 between steps); while a step runs it holds them "
            "(at most one chunk of entries) and, stepping inside the backward, one layer's gradient (the last "
            "column, computed from the sizes; without stepping inside the backward the whole model's gradient, "
            "4 B per weight, is alive at the step).\n\n" + table)
    return text, results


def main(argv: Optional[list[str]] = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--width", type=int, default=None, help="small_cnn width (ignored by vgg11)")
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--time-steps", type=int, default=4)
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    _common.apply_threads(args)
    if args.quick:
        args.arch, args.width, args.image_size, args.time_steps = "small_cnn", 8, 16, 2
    _common.quiet_lightning()
    info = _common.machine_info()
    results = [measure(m, args) for m in args.methods]
    layouts_text, layout_results = layouts_report(args)

    rows = []
    for r in results:
        rows.append([
            METHODS[r["method"]], f"{r['bytes_per_hidden_weight']:.2f}", fmt_mib(r["hidden_weight_bytes"]),
            fmt_mib(r["hidden_opt_state_bytes"]), fmt_mib(r["other_weight_bytes"] + r["other_opt_state_bytes"]),
            fmt_mib(r["gradient_bytes"]), fmt_mib(r["buffer_bytes"]), fmt_mib(r["persistent_state_bytes"]),
            fmt_mib(r["cached_binary_copy_bytes"]) if r["cached_binary_copy_bytes"] else "—",
            f"{r['deployed_bytes'] / 1e6:.2f}",
        ])
    table = markdown_table(
        ["method", "B / hidden weight (weight + opt. state)", "hidden weights MiB", "their opt. state MiB",
         "other params + state MiB", "gradients MiB", "buffers MiB", "persistent total MiB",
         "±1 copy in graph MiB", "deployed MB"], rows)
    kinds = markdown_table(["method", "optimizer state tensors"],
                           [[METHODS[r["method"]], ", ".join(f"{k} {fmt_mib(v)} MiB" for k, v in r["state_by_kind"].items())]
                            for r in results])
    n_hidden = results[0]["hidden_weights"]
    setting = (f"{args.arch}{f' (width {args.width})' if args.width else ''}, {args.num_classes} classes, "
               f"{n_hidden:,} hidden (binary in BSO) weights, T = {args.time_steps}, after one training batch")
    text = "\n".join([
        _common.report_header("Persistent training state per method", info),
        f"Setting: {setting}. Gradients: one per trainable parameter (alive during each step). Deployed size: "
        "1 bit per hidden weight for the binary methods (BPTT deploys sign(latent)), 4 bytes otherwise; "
        "4 bytes per other parameter (the paper's rule).", "", table, "", kinds, "", layouts_text,
    ])
    print("\n" + text, flush=True)
    _common.write_results(_common.output_dir(args), "state_bytes", text,
                          {"machine": info, "setting": vars(args) | {"out": str(args.out)}, "results": results,
                           "layouts": layout_results})
    return results


if __name__ == "__main__":
    main()
