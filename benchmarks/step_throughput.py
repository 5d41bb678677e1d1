"""Time of one online training time step (forward + backward + optimizer step), as ratios measured side by side.

Three implementations of the same online-gradient computation on the same VGG-11 (same weights, same
BatchNorm and LIF settings, same optimizers: BSO or T-BSO for the binary convs + SGD for the rest):

* ``ours`` — :class:`OnlineLIFNode` returns (spikes, trace); every weighted layer runs **once** through the
  trace-gradient autograd op (forward on spikes, weight gradient from the trace);
* ``spikingjelly`` — spikingjelly's own OTTT path: ``layer.OTTTSequential`` over ``nn.Conv2d``/BN and
  ``neuron.OTTTLIFNode`` (its ``GradwithTrace`` logic runs each weighted layer twice: on spikes without grad
  and on traces with grad; its neuron is spikingjelly's own generic LIF step);
* ``run-twice`` — the reference-style wrapper of the OTTT/BSO authors' code: neurons (our own LIF, so only the
  layer mechanics differ from ``ours``) output ``cat([spike, trace])`` along the batch, each weighted layer is
  wrapped to split it, run once on the spikes without grad and once on the traces with grad, and splice the two
  with a replace-gradient Function.

The three paths compute the same weight gradients (checked before timing). Neurons are never reset, so the
timed steps are steady-state steps t > 0. Repetitions are interleaved (in shuffled order); the figures are
medians of CPU time (``time.process_time``, robust on a shared machine) and the ratios are medians of
per-repetition ratios (each path against ours in the same repetition). Wall-clock medians are printed beside them.

The optimizer step alone is timed on the same tensors (the binary weights of VGG-11, with the same gradients):
BSO and T-BSO, eager (the default) and with ``fused=True`` (``torch.compile``), against
``torch.optim.SGD(momentum=0.9, foreach=True)``. With ``--fused`` (the default outside ``--quick``) the three
training-step paths use the fused BSO/T-BSO step too.

    python benchmarks/step_throughput.py --threads 1     # VGG-11, 32x32, batch 16, 25 repetitions
    python benchmarks/step_throughput.py --threads 1 --profile     # + torch.profiler tables
    python benchmarks/step_throughput.py --threads 1 --optimizer-only --compare-with 84d843e   # the step alone,
        # every momentum dtype, beside the eager step of an earlier commit (its optim/functional.py, loaded from git)
    python benchmarks/step_throughput.py --threads 1 --optimizer-only --fused --compare-with 6eb8128   # + both
        # compiled steps (fused=True, dense) side by side
    python benchmarks/step_throughput.py --quick         # smoke test
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402
from _common import markdown_table  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402
from torch import nn  # noqa: E402

from bso_lightning.models import build_model  # noqa: E402
from bso_lightning.nn import OnlineLIFNode, SpikeTraceMap  # noqa: E402
from bso_lightning.nn.packed import PackedBinaryParameter  # noqa: E402
from bso_lightning.optim import BSO, TBSO, split_parameters  # noqa: E402

PATHS = {"ours": "ours (trace op, one pass)", "spikingjelly": "spikingjelly OTTTSequential",
         "run_twice": "run-twice wrapper (reference style)"}


# --------------------------------------------------------------------------- the two run-twice paths


def _sj_neuron(n: OnlineLIFNode) -> nn.Module:
    return neuron.OTTTLIFNode(tau=n.tau, decay_input=False, v_threshold=n.v_threshold, v_reset=None,
                              surrogate_function=surrogate.Sigmoid(alpha=n.surrogate_function.alpha),
                              detach_reset=True, step_mode="s")


def _plain(m: nn.Module) -> nn.Module:
    """The ``nn`` layer of one of our layers, sharing its parameters (so all paths train the same tensors)."""
    if isinstance(m, SpikeTraceMap):
        return m.module
    if isinstance(m, nn.Conv2d):
        conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                         bias=m.bias is not None)
        conv.weight, conv.bias = m.weight, m.bias
        return conv
    if isinstance(m, nn.Linear):
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
        lin.weight, lin.bias = m.weight, m.bias
        return lin
    return m  # BatchNorm (shared module)


def spikingjelly_model(ours: nn.Sequential) -> nn.Module:
    """spikingjelly's OTTT path over the same parameters: OTTTSequential of nn layers and OTTTLIFNode."""
    return layer.OTTTSequential(*[_sj_neuron(m) if isinstance(m, OnlineLIFNode) else _plain(m) for m in ours])


class _Replace(torch.autograd.Function):
    """Forward the second argument, send the gradient to both (OTTT-SNN's ``Replace``)."""

    @staticmethod
    def forward(ctx, z, z_r):
        return z_r

    @staticmethod
    def backward(ctx, grad):
        return grad, grad


class RunTwice(nn.Module):
    """OTTT-SNN's ``WrapedSNNOp``: input is cat([spike, trace]); op on spikes without grad, on traces for grad."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, x):
        b = x.shape[0] // 2
        spike, trace = x[:b], x[b:]
        with torch.no_grad():
            out = self.op(spike).detach()
        out_for_grad = self.op(_Replace.apply(spike, trace))
        return _Replace.apply(out_for_grad, out)


class CatLIF(nn.Module):
    """The reference neuron output: ``cat([spike, trace])`` along the batch (trace without grad).

    Wraps a fresh copy of *our* neuron, so this path differs from ours only in how the weighted layers
    run (twice, on concatenated spikes and traces), not in the neuron's implementation.
    """

    def __init__(self, node: OnlineLIFNode) -> None:
        super().__init__()
        self.node = OnlineLIFNode(decay=node.decay, v_threshold=node.v_threshold, trace=node.trace_mode,
                                  surrogate_alpha=float(node.surrogate_function.alpha))

    def forward(self, x):
        spike, trace = self.node(x)
        return torch.cat([spike, trace])


def run_twice_model(ours: nn.Sequential) -> nn.Module:
    layers: list[nn.Module] = []
    seen_neuron = False
    for m in ours:
        if isinstance(m, OnlineLIFNode):
            layers.append(CatLIF(m))
            seen_neuron = True
        elif seen_neuron and isinstance(m, (nn.Conv2d, nn.Linear)):
            layers.append(RunTwice(_plain(m)))
        else:
            layers.append(_plain(m))
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------- setup


class Path_:
    def __init__(self, name: str, model: nn.Module, binary_opt, fp_opt, time_step_arg: bool):
        self.name, self.model, self.binary_opt, self.fp_opt = name, model, binary_opt, fp_opt
        self.t = 0
        self.time_step_arg = time_step_arg

    def step(self, x, y, time_steps: int) -> None:
        out = self.model(x)
        loss = F.cross_entropy(out, y) / time_steps
        loss.backward()
        if self.time_step_arg:
            self.binary_opt.step(time_step=self.t % time_steps)
        else:
            self.binary_opt.step()
        self.fp_opt.step()
        self.binary_opt.zero_grad(set_to_none=True)
        self.fp_opt.zero_grad(set_to_none=True)
        self.t += 1


def build_paths(arch: str, batch: int, image: int, optimizer: str, seed: int = 0, width: Optional[int] = None,
                fused: bool = False):
    torch.manual_seed(seed)
    kwargs = {"width": width} if width is not None else {}
    paths = {}
    for name in PATHS:
        torch.manual_seed(seed)
        ours = build_model(arch, num_classes=10, in_channels=3, **kwargs)
        model = {"ours": lambda: ours, "spikingjelly": lambda: spikingjelly_model(ours),
                 "run_twice": lambda: run_twice_model(ours)}[name]()
        model.train()
        split = split_parameters(ours)
        binary_opt = (TBSO if optimizer == "tbso" else BSO)(split.binary, fused=fused)
        fp_opt = torch.optim.SGD(split.full_precision, lr=0.1, momentum=0.9)
        paths[name] = Path_(name, model, binary_opt, fp_opt, optimizer == "tbso")
    return paths


def check_same_gradients(arch: str, batch: int, image: int, width: Optional[int]) -> float:
    """Max relative difference of the weight gradients of the three paths over 3 time steps (no optimizer step)."""
    torch.manual_seed(1)
    x = torch.rand(batch, 3, image, image) * 2
    y = torch.randint(0, 10, (batch,))
    grads: dict[str, list[list[torch.Tensor]]] = {}
    for name, p in build_paths(arch, batch, image, "bso", width=width).items():
        functional.reset_net(p.model)
        params = [q for q in p.binary_opt.binary_parameters()] + [q for g in p.fp_opt.param_groups for q in g["params"]]
        grads[name] = []
        for _ in range(3):
            F.cross_entropy(p.model(x), y).backward()
            grads[name].append([q.grad.clone() for q in params])
            for q in params:
                q.grad = None
    worst = 0.0
    for name in ("spikingjelly", "run_twice"):
        for gs_ref, gs in zip(grads["ours"], grads[name]):
            for a, b in zip(gs_ref, gs):
                worst = max(worst, float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)))
    return worst


# --------------------------------------------------------------------------- timing


def interleaved(fns: dict[str, Callable[[], None]], reps: int, warmup: int, seed: int = 0
                ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Run every function once per repetition, in a shuffled order; return (CPU seconds, wall seconds) lists.

    CPU time (``time.process_time``) is the primary figure: on a machine shared with other jobs it does not
    count the time this process waits for a core (with one torch thread it is the compute time itself).
    """
    rng = random.Random(seed)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    wall: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        order = list(fns)
        rng.shuffle(order)
        for k in order:
            c0, w0 = time.process_time(), time.perf_counter()
            fns[k]()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    return cpu, wall


def paired_ratio(times: dict[str, list[float]], key: str, ref: str) -> float:
    """Median over repetitions of time[key] / time[ref] measured in the same repetition."""
    return statistics.median(a / b for a, b in zip(times[key], times[ref]))


def _functional_from_git(rev: str):
    """``bso_lightning/optim/functional.py`` as it was at commit ``rev``, loaded as a module (to time it side by side)."""
    import subprocess
    import types

    source = subprocess.run(["git", "show", f"{rev}:bso_lightning/optim/functional.py"], cwd=_common.ROOT,
                            capture_output=True, text=True, check=True).stdout
    module = types.ModuleType(f"functional_{rev}")
    sys.modules[module.__name__] = module  # (torch.compile imports the module of the function it compiles)
    exec(compile(source, f"{rev}:bso_lightning/optim/functional.py", "exec"), module.__dict__)
    return module


def _functional_step(module, weights, grads, kind: str, packed: bool, momentum_dtype: torch.dtype,
                     fused: bool = False):
    """A closure running ``module.bso`` / ``module.tbso`` (eagerly, or compiled if ``fused``) on its own copy of the
    weights and state."""
    from bso_lightning.optim.functional import NOISE_WIDTH

    params = [PackedBinaryParameter.from_signs(w.detach()) if packed else w.detach().clone() for w in weights]
    momenta = [torch.zeros(w.shape, dtype=momentum_dtype) for w in weights]
    counters = [[torch.zeros((), dtype=torch.int64) for _ in weights] for _ in range(2)]
    gen = torch.Generator().manual_seed(0)
    noises = (None if momentum_dtype == torch.float32 else
              [torch.randint(0, 1 << 16, (NOISE_WIDTH,), dtype=torch.int32, generator=gen) for _ in weights])
    vs = [torch.zeros(1) for _ in weights]
    if kind == "bso":
        return lambda: module.bso(params, grads, momenta, *counters, beta=0.999, threshold=5e-7, rounding_noise=noises,
                                  fused=fused)
    return lambda: module.tbso(params, grads, momenta, vs, *counters, time_step=0, betas=(0.999, 0.99999),
                               threshold=5e-7, eps=1e-10, rounding_noise=noises, fused=fused)


def compare_with(rev: str, arch: str, reps: int, warmup: int, width: Optional[int], fused: bool = False):
    """The eager step of commit ``rev`` and today's, on the same tensors, interleaved (same machine state); with
    ``fused``, also both compiled steps (dense BSO/T-BSO: an old compiled packed step would run today's bit packer)."""
    from bso_lightning.optim import functional

    before = _functional_from_git(rev)
    torch.manual_seed(0)
    kwargs = {"width": width} if width is not None else {}
    weights = split_parameters(build_model(arch, num_classes=10, in_channels=3, **kwargs)).binary
    grads = [torch.randn_like(w) * 1e-3 for w in weights]
    fns = {}
    for kind, packed, dtype, label in (("bso", False, torch.float32, "BSO"), ("tbso", False, torch.float32, "T-BSO"),
                                       ("bso", True, torch.float32, "BSO (packed)"),
                                       ("tbso", True, torch.bfloat16, "T-BSO (packed, bf16 momentum)")):
        fns[f"{label} @ {rev}"] = _functional_step(before, weights, grads, kind, packed, dtype)
        fns[f"{label} now"] = _functional_step(functional, weights, grads, kind, packed, dtype)
    for kind, label in (("bso", "BSO (fused=True)"), ("tbso", "T-BSO (fused=True)")) if fused else ():
        for key, module in ((f"{label} @ {rev}", before), (f"{label} now", functional)):
            fns[key] = _functional_step(module, weights, grads, kind, False, torch.float32, fused=True)
            start = time.perf_counter()
            fns[key]()  # compiles
            print(f"{key}: first step (torch.compile) {time.perf_counter() - start:.0f} s", flush=True)
    return interleaved(fns, reps, warmup)


def optimizer_step_times(arch: str, reps: int, warmup: int, width: Optional[int], fused: bool = False):
    """CPU and wall seconds of BSO/T-BSO steps (eager, and fused if asked) and SGD's on VGG-11's binary weights."""
    torch.manual_seed(0)
    kwargs = {"width": width} if width is not None else {}
    weights = split_parameters(build_model(arch, num_classes=10, in_channels=3, **kwargs)).binary
    grads = [torch.randn_like(w) * 1e-3 for w in weights]

    def copies():
        ps = [nn.Parameter(w.detach().clone()) for w in weights]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        return ps

    def packed():  # the same weights stored as bits; their gradient as the layers hand it over
        ps = [PackedBinaryParameter.from_signs(w.detach()) for w in weights]
        for p, g in zip(ps, grads):
            p.packed_grad = g.clone()
        return ps

    bso, tbso, sgd = BSO(copies()), TBSO(copies()), torch.optim.SGD(copies(), lr=0.1, momentum=0.9, foreach=True)
    bso_p, tbso_p = BSO(packed()), TBSO(packed(), momentum_dtype="bfloat16")
    tbso_p32, tbso_p8 = TBSO(packed()), TBSO(packed(), momentum_dtype="int8")
    fns = {"BSO": bso.step, "T-BSO": lambda: tbso.step(time_step=0), "SGD": sgd.step,
           "BSO (packed)": bso_p.step, "T-BSO (packed)": lambda: tbso_p32.step(time_step=0),
           "T-BSO (packed, bf16 momentum)": lambda: tbso_p.step(time_step=0),
           "T-BSO (packed, int8 momentum)": lambda: tbso_p8.step(time_step=0)}
    if fused:
        bso_f, tbso_f = BSO(copies(), fused=True), TBSO(copies(), fused=True)
        for name, fn in (("BSO (fused=True)", bso_f.step), ("T-BSO (fused=True)", lambda: tbso_f.step(time_step=0))):
            start = time.perf_counter()
            fn()  # compiles
            print(f"{name}: first step (torch.compile) {time.perf_counter() - start:.0f} s", flush=True)
            fns[name] = fn
    return interleaved(fns, reps, warmup)


def weighted_layer_times(arch: str, batch: int, image: int, width: Optional[int], reps: int
                         ) -> tuple[float, float]:
    """Median CPU seconds (F, FB) of the layers the run-twice path runs twice, summed over those layers.

    F: forward without grad; FB: forward with grad + backward (input and weight gradients). If nothing
    but these layers cost time, ours would take FB and run-twice F + FB per step: (F + FB) / FB is the
    ratio the weighted layers allow.
    """
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10, in_channels=3, **({"width": width} if width is not None else {}))
    model.train()
    shapes: list[tuple[nn.Module, torch.Size]] = []
    seen_neuron = False
    for m in model:
        if isinstance(m, OnlineLIFNode):
            seen_neuron = True
        elif seen_neuron and isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(lambda mod, inp, out: shapes.append((_plain(mod), inp[0].spike.shape)))
    model(torch.rand(batch, 3, image, image))
    f_total = fb_total = 0.0
    for op, shape in shapes:
        x = torch.rand(shape, requires_grad=True)
        grad = torch.randn_like(op(x))

        def forward_only():
            with torch.no_grad():
                op(x)

        def forward_backward():
            op(x).backward(grad)

        cpu, _ = interleaved({"f": forward_only, "fb": forward_backward}, reps, 1)
        f_total += statistics.median(cpu["f"])
        fb_total += statistics.median(cpu["fb"])
    return f_total, fb_total


def optimizer_only(args, info: dict[str, Any]) -> dict[str, Any]:
    """The optimizer step alone (and, with ``--compare-with``, the step of an earlier commit beside today's)."""
    from bso_lightning.optim import functional

    opt_cpu, opt_wall = optimizer_step_times(args.arch, args.opt_reps, max(2, args.warmup), args.width,
                                             fused=args.fused)
    ratios = {k: paired_ratio(opt_cpu, k, "SGD") for k in opt_cpu}
    rows = [[k, f"{statistics.median(opt_cpu[k]) * 1e3:,.2f}", f"{statistics.median(opt_wall[k]) * 1e3:,.2f}",
             f"{ratios[k]:.2f}×"] for k in opt_cpu]
    parts = [_common.report_header("Optimizer step alone", info),
             f"Setting: the binary weights of {args.arch}, gradients N(0, 1e-3²), CPU, {args.opt_reps} interleaved "
             f"repetitions; eager step in chunks of {functional.EAGER_CHUNK} entries, buffers freed after each call.",
             "", markdown_table(["optimizer", "median CPU ms / step", "median wall ms", "time ÷ SGD (paired, CPU)"],
                                rows)]
    data = {"machine": info, "setting": vars(args) | {"out": str(args.out)}, "optimizer_cpu_seconds": opt_cpu,
            "optimizer_wall_seconds": opt_wall, "optimizer_ratio_to_sgd": ratios}
    if args.compare_with:
        cpu, wall = compare_with(args.compare_with, args.arch, args.opt_reps, max(2, args.warmup), args.width,
                                 fused=args.fused)
        rows = []
        for key in cpu:
            if key.endswith(" now"):
                label = key[: -len(" now")]
                before = f"{label} @ {args.compare_with}"
                rows.append([label, f"{statistics.median(cpu[before]) * 1e3:,.2f}",
                             f"{statistics.median(cpu[key]) * 1e3:,.2f}", f"{paired_ratio(cpu, key, before):.2f}×",
                             f"{statistics.median(wall[before]) * 1e3:,.2f} → {statistics.median(wall[key]) * 1e3:,.2f}"])
        parts += ["", f"Step of commit {args.compare_with} (its `optim/functional.py`, loaded from git) and "
                  f"today's, eager{' and compiled (fused=True)' if args.fused else ''}, same tensors, interleaved:", "",
                  markdown_table(["step", f"CPU ms @ {args.compare_with}", "CPU ms now", "now ÷ before (paired, CPU)",
                                  "wall ms before → now"], rows)]
        data |= {"compare_with": args.compare_with, "compare_cpu_seconds": cpu, "compare_wall_seconds": wall}
    text = "\n".join(parts)
    print("\n" + text, flush=True)
    _common.write_results(_common.output_dir(args), "step_throughput_optimizer", text, data)
    return data


def profile(fn: Callable[[], None], title: str, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for _ in range(2):
        fn()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"### profile: {title} (3 calls)\n\n```\n{table}\n```\n"


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="vgg11")
    parser.add_argument("--width", type=int, default=None, help="small_cnn width (ignored by vgg11)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--time-steps", type=int, default=4, help="T (the loss is divided by it; T-BSO's v index)")
    parser.add_argument("--reps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--opt-reps", type=int, default=50, help="repetitions of the optimizer-step-alone timing")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler tables of the steps")
    parser.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                        help="also time BSO/T-BSO with fused=True, and use it in the training-step paths "
                             "(default: on; off with --quick; compiling takes ~20 s per optimizer)")
    parser.add_argument("--optimizer-only", action="store_true",
                        help="only the optimizer step alone (every momentum dtype); results: step_throughput_optimizer")
    parser.add_argument("--compare-with", metavar="REV", default=None,
                        help="with --optimizer-only: also time the eager step of git commit REV on the same tensors "
                             "(with --fused: its compiled dense step too)")
    _common.add_output_args(parser)
    args = parser.parse_args(argv)
    _common.apply_threads(args)
    if args.quick:
        args.arch, args.width, args.batch_size, args.image_size = "small_cnn", 8, 2, 16
        args.reps, args.warmup, args.opt_reps = 3, 1, 5
    if args.fused is None:
        args.fused = not args.quick and not args.optimizer_only

    info = _common.machine_info()
    if args.optimizer_only:
        return optimizer_only(args, info)
    kw = dict(width=args.width)
    worst = check_same_gradients(args.arch, max(2, min(args.batch_size, 4)), args.image_size, args.width)
    print(f"same weight gradients on the three paths: max relative difference {worst:.1e}", flush=True)
    if worst > 1e-3:
        raise SystemExit(f"the three paths disagree on the weight gradients (max relative difference {worst:.2e})")

    x = torch.rand(args.batch_size, 3, args.image_size, args.image_size) * 2
    y = torch.randint(0, 10, (args.batch_size,))
    fns: dict[str, Callable[[], None]] = {}
    all_paths = {}
    for opt in ("bso", "tbso"):
        for name, p in build_paths(args.arch, args.batch_size, args.image_size, opt, fused=args.fused,
                                   **kw).items():
            all_paths[(opt, name)] = p
            fns[f"{opt}/{name}"] = (lambda p=p: p.step(x, y, args.time_steps))
    step_cpu, step_wall = interleaved(fns, args.reps, args.warmup)
    med = {k: statistics.median(v) for k, v in step_cpu.items()}
    med_wall = {k: statistics.median(v) for k, v in step_wall.items()}
    opt_cpu, opt_wall = optimizer_step_times(args.arch, args.opt_reps, max(2, args.warmup), args.width,
                                             fused=args.fused)
    opt_med = {k: statistics.median(v) for k, v in opt_cpu.items()}
    layer_f, layer_fb = weighted_layer_times(args.arch, args.batch_size, args.image_size, args.width,
                                             max(3, args.reps // 2))
    opt_med_wall = {k: statistics.median(v) for k, v in opt_wall.items()}

    rows = []
    ratios: dict[str, float] = {}
    for opt, label in (("bso", "BSO"), ("tbso", "T-BSO")):
        for name in PATHS:
            key = f"{opt}/{name}"
            ratios[key] = paired_ratio(step_cpu, key, f"{opt}/ours")
            rows.append([label, PATHS[name], f"{med[key] * 1e3:,.1f}", f"{med_wall[key] * 1e3:,.1f}",
                         f"{ratios[key]:.2f}×"])
    step_table = markdown_table(["optimizer", "path", "median CPU ms / time step", "median wall ms",
                                 "time ÷ ours (paired, CPU)"], rows)
    opt_ratios = {k: paired_ratio(opt_cpu, k, "SGD") for k in opt_med}
    opt_rows = [[k, f"{opt_med[k] * 1e3:,.2f}", f"{opt_med_wall[k] * 1e3:,.2f}", f"{opt_ratios[k]:.2f}×"]
                for k in opt_med]
    opt_table = markdown_table(["optimizer", "median CPU ms / step", "median wall ms", "time ÷ SGD (paired, CPU)"],
                               opt_rows)

    n_binary = sum(p.numel() for p in all_paths[("bso", "ours")].binary_opt.binary_parameters())
    targets = []
    for opt, label in (("bso", "BSO"), ("tbso", "T-BSO")):
        twice, sj = ratios[f"{opt}/run_twice"], ratios[f"{opt}/spikingjelly"]
        targets.append(f"{label}: run-twice ÷ ours = {twice:.2f} (target ≥ 1.30: {'met' if twice >= 1.3 else 'MISSED'}); "
                       f"spikingjelly ÷ ours = {sj:.2f} (target ≥ 1.00: {'met' if sj >= 1.0 else 'MISSED'})")
    for k in ("BSO", "T-BSO"):
        r = opt_ratios[k]
        if args.fused:
            rf = opt_ratios[f"{k} (fused=True)"]
            targets.append(f"{k} step ÷ SGD step = {rf:.2f} with fused=True (target ≤ 1.20: "
                           f"{'met' if rf <= 1.2 else 'MISSED'}); {r:.2f} eager (the default)")
        else:
            targets.append(f"{k} step ÷ SGD step = {r:.2f} eager (target ≤ 1.20, for fused=True: not measured)")

    setting = (f"{args.arch}{f' (width {args.width})' if args.width else ''}, {args.image_size}×{args.image_size} "
               f"input, batch {args.batch_size}, CPU, {args.reps} interleaved repetitions after {args.warmup} "
               f"warm-up; optimizer step alone: {n_binary:,} binary weights in "
               f"{len(all_paths[('bso', 'ours')].binary_opt.binary_parameters())} tensors, {args.opt_reps} repetitions")
    text = "\n".join([
        _common.report_header("Training time step: ours vs run-twice implementations", info),
        f"Setting: {setting}. Weight gradients of the three paths agree to {worst:.1e} (max relative difference). "
        "Ratios are medians over repetitions of the ratio of CPU times measured in the same repetition.",
        "", f"One time step (forward + backward + BSO/T-BSO step{' with fused=True' if args.fused else ''} + SGD step):",
        "", step_table, "",
        f"The layers the run-twice path runs twice, alone (same shapes): forward without grad {layer_f * 1e3:,.1f} ms, "
        f"forward + backward {layer_fb * 1e3:,.1f} ms (backward ≈ {(layer_fb - layer_f) / layer_f:.2f}× the forward); "
        f"running them twice costs (F + FB) / FB = {(layer_f + layer_fb) / layer_fb:.2f}× — the ratio they allow, "
        "if nothing else took time.", "",
        "Optimizer step alone on the same tensors:", "", opt_table, "", "Targets:", "",
        *(f"- {t}" for t in targets),
    ])
    if args.profile:
        p = all_paths[("bso", "ours")]
        text += "\n\n" + profile(lambda: p.step(x, y, args.time_steps), "one BSO time step, ours")
        torch.manual_seed(0)
        weights = split_parameters(build_model(args.arch, num_classes=10, in_channels=3,
                                               **({"width": args.width} if args.width else {}))).binary
        ps = [nn.Parameter(w.detach().clone()) for w in weights]
        for q in ps:
            q.grad = torch.randn_like(q) * 1e-3
        text += "\n" + profile(BSO(ps).step, "BSO.step alone")
        tb = TBSO([nn.Parameter(w.detach().clone()) for w in weights])
        for q in tb.binary_parameters():
            q.grad = torch.randn_like(q) * 1e-3
        text += "\n" + profile(lambda: tb.step(time_step=0), "TBSO.step alone")
        sgd_ps = [nn.Parameter(w.detach().clone()) for w in weights]
        for q in sgd_ps:
            q.grad = torch.randn_like(q) * 1e-3
        text += "\n" + profile(torch.optim.SGD(sgd_ps, lr=0.1, momentum=0.9, foreach=True).step, "SGD.step alone")
    print("\n" + text, flush=True)
    data = {"machine": info, "setting": vars(args) | {"out": str(args.out)}, "max_grad_rel_diff": worst,
            "step_cpu_seconds": step_cpu, "step_wall_seconds": step_wall, "optimizer_cpu_seconds": opt_cpu,
            "optimizer_wall_seconds": opt_wall, "step_median": med, "optimizer_median": opt_med,
            "step_ratio_to_ours": ratios, "optimizer_ratio_to_sgd": opt_ratios,
            "weighted_layers_forward_seconds": layer_f, "weighted_layers_forward_backward_seconds": layer_fb}
    _common.write_results(_common.output_dir(args), "step_throughput", text, data)
    return data


if __name__ == "__main__":
    main()
