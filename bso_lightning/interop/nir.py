"""NIR export and import of this library's BSNNs (``vgg11``, ``small_cnn``, ``resnet18(stem="cifar")``; docs/deploying.md).

Each layer becomes one NIR node named by its module path (a chain for VGG; a Bi-Real unit's two branches
both feed the next node, whose input NIR defines as the sum of its incoming edges):

========================  ==================================================================================
ours                      NIR
========================  ==================================================================================
conv (binary or not)      ``Conv2d`` (binary weights exactly ±1, bias 0 where the layer has none)
BatchNorm2d (eval)        ``batchnorm="separate"``: a 1×1 ``Conv2d`` with diagonal weight γ/√(σ²+ε) and bias
                          β − μ·γ/√(σ²+ε) (binary convs stay ±1); ``"fold"``: folded into the conv before it
LIF (λ, Vth, soft reset)  ``LIF`` with τ = dt/(1−λ), R = 1/(1−λ), v_leak = 0, v_threshold = Vth, v_reset = 0
AvgPool2d / global pool   ``AvgPool2d`` (global pooling: kernel = stride = the feature map)
Flatten                   ``Flatten(start_dim=0)`` (NIR shapes have no batch dimension)
classifier                ``Affine`` (the readout: its output current at each step; prediction = mean over T)
========================  ==================================================================================

Forward-Euler of NIR's LIF, τ·dv/dt = (v_leak − v) + R·I, with step dt gives v[t] = (1 − dt/τ)·v[t−1] +
(R·dt/τ)·I[t] = λ·v[t−1] + I[t]: our decay with the input not decayed. NIR's LIF resets to v_reset;
ours subtracts Vth (paper Eq. 2), which NIR's LIF cannot state, so every LIF node carries
``metadata["reset"] = "subtract"`` (and ``"decay"``, ``"dt"``); our importer honours it, a generic consumer
resets to zero (measured by ``benchmarks/nir_agreement.py``).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Optional, Union

import nir
import numpy as np
import torch
from torch import Tensor, nn

from bso_lightning.atomic import PathLike, atomic_file
from bso_lightning.nn import BinaryConv2d, OnlineConv2d, OnlineLinear, OnlineLIFNode, SpikeTraceMap
from bso_lightning.nn.pooling import StemPool
from bso_lightning.nn.time_step_batchnorm import TimeStepBatchNorm2d
from bso_lightning.models.resnet import BiRealUnit
from bso_lightning.nn.layers import BinaryLayer

__all__ = ["DEFAULT_DT", "NIRExportError", "export_checkpoint_nir", "export_nir", "import_nir", "read_nir",
           "write_nir"]

DEFAULT_DT = 1e-4
"""Seconds per time step written into the graph; our steps have no physical duration. 0.1 ms is the step
snntorch's NIR importer assumes, so its β = 1 − dt/τ equals our λ."""

BatchNormMode = Literal["separate", "fold"]
PRODUCER = "bso-lightning"


class PooledBatchNormWarning(UserWarning):
    """A model with per-time-step BatchNorm statistics was exported with the pooled ones."""


class NIRExportError(ValueError):
    """The model (or graph) holds something this exporter (importer) does not translate; names the layer."""


# --------------------------------------------------------------------------------------------- export


def _sequential_of(model: nn.Module) -> nn.Sequential:
    inner = getattr(model, "model", model)  # an OnlineClassifier holds its network in .model
    if not isinstance(inner, nn.Sequential):
        raise NIRExportError(f"NIR export supports this library's nn.Sequential models (vgg11, small_cnn, "
                             f"resnet18 with stem='cifar'); got {type(inner).__name__}")
    return inner


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().to(torch.float32).numpy().copy()


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Eval-mode BatchNorm as y = scale·x + shift (float64 for the arithmetic, then float32)."""
    var = bn.running_var.double()
    mean = bn.running_mean.double()
    weight = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
    bias = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
    scale = weight / torch.sqrt(var + bn.eps)
    return scale, bias - mean * scale


def _conv_node(conv: nn.Conv2d, shape: Sequence[int], weight: Tensor, bias: Optional[Tensor],
               metadata: dict[str, Any]) -> nir.Conv2d:
    return nir.Conv2d(
        input_shape=tuple(int(s) for s in shape[2:]),
        weight=_np(weight),
        stride=tuple(conv.stride), padding=tuple(conv.padding), dilation=tuple(conv.dilation),
        groups=conv.groups,
        bias=_np(bias) if bias is not None else np.zeros(weight.shape[0], dtype=np.float32),
        metadata=metadata,
    )


def _bn_node(bn: nn.BatchNorm2d, shape: Sequence[int]) -> nir.Conv2d:
    scale, shift = _bn_scale_shift(bn)
    c = scale.numel()
    meta = {"bso_layer": "batchnorm", "eps": float(bn.eps), "running_mean": _np(bn.running_mean),
            "running_var": _np(bn.running_var),
            "gamma": _np(bn.weight) if bn.weight is not None else np.ones(c, np.float32),
            "beta": _np(bn.bias) if bn.bias is not None else np.zeros(c, np.float32)}
    # a dense 1x1 conv with a diagonal weight: NIR 1.0.8's type inference ignores `groups`, so the
    # depthwise form (C weights instead of C²) fails nir.read's type check
    weight = torch.diag(scale.float()).view(c, c, 1, 1)
    return nir.Conv2d(input_shape=tuple(int(s) for s in shape[2:]), weight=_np(weight),
                      stride=1, padding=0, dilation=1, groups=1, bias=_np(shift.float()), metadata=meta)


def _lif_node(lif: OnlineLIFNode, shape: Sequence[int], dt: float) -> nir.LIF:
    decay, vth = float(lif.decay), float(lif.v_threshold)
    full = lambda v: np.full(tuple(shape), v, dtype=np.float64)  # noqa: E731
    return nir.LIF(tau=full(dt / (1.0 - decay)), r=full(1.0 / (1.0 - decay)), v_leak=full(0.0),
                   v_threshold=full(vth), v_reset=full(0.0),
                   metadata={"reset": "subtract", "decay": decay, "dt": dt, "fires_when": "v >= v_threshold"})


def _pool_node(pool: nn.Module, shape: Sequence[int]) -> nir.AvgPool2d:
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        out = pool.output_size if isinstance(pool.output_size, tuple) else (pool.output_size,) * 2
        h, w = int(shape[2]), int(shape[3])
        if any(o is None for o in out) or h % out[0] or w % out[1]:
            raise NIRExportError(f"AdaptiveAvgPool2d({pool.output_size}) on a {h}x{w} map is not a fixed pooling")
        k = (h // out[0], w // out[1])
        return nir.AvgPool2d(kernel_size=np.array(k), stride=np.array(k), padding=np.array([0, 0]))
    if pool.ceil_mode or not pool.count_include_pad or pool.divisor_override is not None:
        raise NIRExportError("AvgPool2d with ceil_mode, count_include_pad=False or divisor_override has no NIR node")
    pair = lambda v: np.array(v if isinstance(v, (tuple, list)) else (v, v))  # noqa: E731
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    return nir.AvgPool2d(kernel_size=pair(pool.kernel_size), stride=pair(stride), padding=pair(pool.padding))


class _GraphBuilder:
    """Collects NIR nodes and edges; a node's input is the sum of its incoming edges (NIR's rule)."""

    def __init__(self, input_shape: Sequence[int], dt: float, batchnorm: BatchNormMode) -> None:
        self.nodes: dict[str, nir.NIRNode] = {"input": nir.Input(input_type={"input": np.array(input_shape)})}
        self.edges: list[tuple[str, str]] = []
        self.dt, self.fold = dt, batchnorm == "fold"

    def add(self, name: str, node: nir.NIRNode, sources: list[str]) -> list[str]:
        self.nodes[name] = node
        self.edges += [(src, name) for src in sources]
        return [name]

    def layers(self, named: list[tuple[str, nn.Module]], sources: list[str], x: Tensor) -> tuple[list[str], Tensor]:
        """Translate a path of layers; returns the nodes whose sum is its output, and a sample of that output."""
        i = 0
        while i < len(named):
            name, layer = named[i]
            inner = layer.module if isinstance(layer, SpikeTraceMap) else layer
            if isinstance(inner, BiRealUnit):
                sources, x = self.unit(name, inner, sources, x)
            elif isinstance(inner, nn.Conv2d):
                bn = named[i + 1][1] if i + 1 < len(named) and isinstance(named[i + 1][1], nn.BatchNorm2d) else None
                folded = self.fold and bn is not None
                sources = self.add(name, self.conv(name, inner, x, bn if folded else None), sources)
                i += folded
                x = inner(x)
            elif isinstance(inner, nn.BatchNorm2d):
                sources = self.add(name, _bn_node(inner, x.shape), sources)
            elif isinstance(inner, OnlineLIFNode):
                sources = self.add(name, _lif_node(inner, x.shape[1:], self.dt), sources)
            elif isinstance(inner, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
                sources = self.add(name, _pool_node(inner, x.shape), sources)
                x = inner(x)
            elif isinstance(inner, StemPool):  # its factor for this input size (none: no node)
                k = inner.factor(x.shape[-2], x.shape[-1])
                if k > 1:
                    sources = self.add(name, _pool_node(nn.AvgPool2d(k), x.shape), sources)
                x = inner(x)
            elif isinstance(inner, nn.Flatten):
                if inner.start_dim != 1 or inner.end_dim != -1:
                    raise NIRExportError(f"layer {name}: only Flatten(1, -1) is exported, got "
                                         f"({inner.start_dim}, {inner.end_dim})")
                sources = self.add(name, nir.Flatten(input_type={"input": np.array(x.shape[1:])}, start_dim=0,
                                                     end_dim=-1), sources)
                x = inner(x)
            elif isinstance(inner, nn.Linear):
                bias = inner.bias if inner.bias is not None else torch.zeros(inner.out_features)
                kind = "binary_linear" if isinstance(inner, BinaryLayer) else "linear"
                sources = self.add(name, nir.Affine(weight=_np(inner.weight), bias=_np(bias),
                                                    metadata={"bso_layer": kind}), sources)
                x = inner(x)
            elif isinstance(inner, nn.Identity):
                pass
            else:
                hint = " (NIR 1.0 has no max pooling: build resnet18 with stem='cifar')" if isinstance(inner, nn.MaxPool2d) else ""
                raise NIRExportError(f"layer {name} ({type(inner).__name__}) has no NIR translation here{hint}; "
                                     "exported are Conv2d, BatchNorm2d, OnlineLIFNode, AvgPool2d, Flatten, Linear "
                                     "and Bi-Real units")
            i += 1
        return sources, x

    def conv(self, name: str, conv: nn.Conv2d, x: Tensor, bn: Optional[nn.BatchNorm2d]) -> nir.Conv2d:
        binary = isinstance(conv, BinaryLayer)
        if binary and not bool(((conv.weight == 1) | (conv.weight == -1)).all()):
            raise NIRExportError(f"layer {name} ({type(conv).__name__}) holds weights other than ±1")
        weight = conv.weight.double()
        bias = conv.bias.double() if conv.bias is not None else None
        meta: dict[str, Any] = {"bso_layer": "binary_conv" if binary else "conv"}
        if bn is not None:  # fold: y = scale·(W*x + b) + shift
            scale, shift = _bn_scale_shift(bn)
            weight = weight * scale.view(-1, 1, 1, 1)
            bias = shift if bias is None else bias * scale + shift
            meta = {"bso_layer": "conv_bn_folded", "binary": int(binary)}
        return _conv_node(conv, x.shape, weight.float(), None if bias is None else bias.float(), meta)

    def unit(self, name: str, unit: BiRealUnit, sources: list[str], x: Tensor) -> tuple[list[str], Tensor]:
        """BN(conv(LIF(x))) + shortcut(x): the next node receives edges from both branches (summed)."""
        main, y = self.layers([(f"{name}.neuron", unit.neuron), (f"{name}.conv", unit.conv), (f"{name}.bn", unit.bn)],
                              sources, x)
        shortcut = unit.shortcut
        if isinstance(shortcut, nn.Identity):
            return main + sources, y
        side, _ = self.layers([(f"{name}.shortcut.{j}", m) for j, m in enumerate(shortcut)], sources, x)
        return main + side, y


@torch.no_grad()
def export_nir(model: nn.Module, input_shape: Sequence[int], dt: float = DEFAULT_DT,
               batchnorm: BatchNormMode = "separate", time_steps: Optional[int] = None,
               arch: Optional[str] = None, arch_kwargs: Optional[Mapping[str, Any]] = None) -> nir.NIRGraph:
    """The NIR graph of ``model`` (an ``OnlineClassifier`` or its network) for inputs ``[C, H, W]``.

    Args:
        input_shape: one sample's shape, without batch dimension (e.g. ``(1, 16, 16)`` for digits).
        dt: seconds per time step stated in the graph (τ = dt/(1−λ)); default :data:`DEFAULT_DT`.
        batchnorm: ``"separate"`` (binary weights stay ±1; BatchNorm is a diagonal 1×1 conv) or ``"fold"``.
        time_steps: T the model was trained with, recorded in the graph's metadata (default: the module's).
        arch, arch_kwargs: the factory that builds ``model`` (default: from an ``OnlineClassifier``'s
            hyper-parameters), recorded so that :func:`import_nir` can rebuild residual networks exactly.
    """
    if not (isinstance(dt, (int, float)) and dt > 0 and math.isfinite(dt)):
        raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
    if batchnorm not in ("separate", "fold"):
        raise ValueError(f"batchnorm must be 'separate' or 'fold', got {batchnorm!r}")
    if len(input_shape) != 3 or any(int(s) < 1 for s in input_shape):
        raise ValueError(f"input_shape must be [C, H, W] of positive sizes, got {list(input_shape)}")
    hparams = getattr(model, "hparams", None)
    if isinstance(hparams, Mapping) and "arch" in hparams:
        from bso_lightning.export import model_spec_from_hparams

        time_steps = hparams.get("time_steps") if time_steps is None else time_steps
        if arch is None:
            arch, arch_kwargs = model_spec_from_hparams(hparams)
    if arch_kwargs and "batchnorm_time_steps" in arch_kwargs:  # the graph holds the pooled statistics (below)
        arch_kwargs = {k: v for k, v in arch_kwargs.items() if k != "batchnorm_time_steps"}
    seq = _sequential_of(model)
    if any(isinstance(m, TimeStepBatchNorm2d) for m in seq.modules()):
        warnings.warn(
            "NIR graphs are the same at every time step, so BatchNorm is exported with its statistics pooled over "
            "the time steps, not the per-step ones this model evaluates with (batchnorm_statistics='per_time_step'): "
            "the graph can score below test/acc (python benchmarks/nir_agreement.py measures it). For a graph that "
            "computes exactly what the model evaluates, train with batchnorm_statistics='pooled'.",
            PooledBatchNormWarning, stacklevel=2)
    builder = _GraphBuilder(input_shape, float(dt), batchnorm)
    sources, x = builder.layers(list(seq.named_children()), ["input"],
                                torch.zeros(1, *[int(s) for s in input_shape]))
    builder.add("output", nir.Output(output_type={"output": np.array(x.shape[1:])}), sources)
    metadata: dict[str, Any] = {"producer": PRODUCER, "dt": float(dt), "batchnorm": batchnorm,
                                "readout": "prediction = mean over the time steps of the output node's value",
                                "input": "static data: the same input current at every step; event data: frame t at step t"}
    if time_steps is not None:
        metadata["time_steps"] = int(time_steps)
    if arch is not None:
        metadata["arch"] = arch
        metadata["arch_kwargs"] = json.dumps(dict(arch_kwargs or {}))
    return nir.NIRGraph(nodes=builder.nodes, edges=builder.edges, metadata=metadata)


def write_nir(graph: nir.NIRGraph, path: PathLike) -> int:
    """Write ``graph`` with ``nir.write`` (atomically); returns the file size in bytes."""
    with atomic_file(path) as tmp:
        nir.write(str(tmp), graph)
    return Path(path).stat().st_size


#: Bounds of a NIR file checked before ``nir.read`` loads it (h5py arrays may be compressed: a small file can hold
#: arrays of any size): all arrays together at most 4 GiB (as float32 the :data:`MAX_MODEL_VALUES` of
#: ``bso_lightning.checkpoints``), at most 100,000 groups and arrays, nested at most 32 deep.
MAX_NIR_ARRAY_BYTES = 2**32
MAX_NIR_OBJECTS = 100_000
MAX_NIR_DEPTH = 32


def _check_nir_file_bounds(path: Path) -> None:
    """Walk the HDF5 tree (shapes and dtypes only, no array read) against :data:`MAX_NIR_ARRAY_BYTES`,
    :data:`MAX_NIR_OBJECTS` and :data:`MAX_NIR_DEPTH`; ``NIRExportError`` naming the file and the array."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except Exception as exc:  # noqa: BLE001 - h5py raises many kinds
        raise NIRExportError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from exc
    with handle:
        total, objects, stack = 0, 0, [(handle, 0)]
        while stack:
            group, depth = stack.pop()
            for name in group:
                item = group.get(name, getlink=False)
                objects += 1
                where = f"{item.name}" if item is not None else f"{group.name}/{name}"
                if objects > MAX_NIR_OBJECTS:
                    raise NIRExportError(f"{path}: more than {MAX_NIR_OBJECTS} groups and arrays; not read")
                if isinstance(item, h5py.Group):
                    if depth + 1 > MAX_NIR_DEPTH:
                        raise NIRExportError(f"{path}: {where}: nested more than {MAX_NIR_DEPTH} deep; not read")
                    stack.append((item, depth + 1))
                elif isinstance(item, h5py.Dataset):
                    nbytes = int(np.prod(item.shape, dtype=np.float64) * item.dtype.itemsize) if item.shape else \
                        item.dtype.itemsize
                    total += nbytes
                    if total > MAX_NIR_ARRAY_BYTES:
                        raise NIRExportError(f"{path}: {where}: an array of shape {item.shape} ({item.dtype}) brings "
                                             f"the file's arrays to {total:,} bytes, more than the "
                                             f"{MAX_NIR_ARRAY_BYTES:,} allowed; not read")


def read_nir(path: PathLike) -> nir.NIRGraph:
    """``nir.read`` with a clear error for a missing or unreadable file, and bounds checked before any array is
    read (:func:`_check_nir_file_bounds`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such NIR file")
    _check_nir_file_bounds(path)
    try:
        return nir.read(str(path))
    except Exception as exc:  # noqa: BLE001 - h5py/nir raise many kinds
        raise NIRExportError(f"{path}: not a readable NIR file ({type(exc).__name__}: {exc})") from exc


# --------------------------------------------------------------------------------------------- import


def _chain(graph: nir.NIRGraph) -> list[str]:
    nexts: dict[str, list[str]] = {}
    for src, dst in graph.edges:
        nexts.setdefault(src, []).append(dst)
    inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
    if len(inputs) != 1:
        raise NIRExportError(f"expected one Input node, found {len(inputs)}")
    order = [inputs[0]]
    while not isinstance(graph.nodes[order[-1]], nir.Output):
        succ = nexts.get(order[-1], [])
        if len(succ) != 1 or succ[0] in order:
            raise NIRExportError(f"node {order[-1]!r} has {len(succ)} successors; only chains "
                                 "input -> ... -> output are imported")
        order.append(succ[0])
    return order[1:-1]


def _meta(node: nir.NIRNode, key: str, default: Any = None) -> Any:
    value = (node.metadata or {}).get(key, default)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    return value


def _unique(values: np.ndarray, what: str, name: str) -> float:
    u = np.unique(values)
    if u.size != 1:
        raise NIRExportError(f"node {name!r}: {what} differs between neurons; our LIF layer takes one value")
    return float(u[0])


def _import_conv(node: nir.Conv2d, name: str) -> nn.Module:
    if _meta(node, "bso_layer") == "batchnorm":
        c = node.weight.shape[0]
        bn = nn.BatchNorm2d(c, eps=float(_meta(node, "eps")))
        for attr, key in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "running_mean"),
                          ("running_var", "running_var")):
            getattr(bn, attr).data.copy_(torch.as_tensor(np.asarray(node.metadata[key]), dtype=torch.float32))
        return bn
    weight = torch.as_tensor(np.asarray(node.weight), dtype=torch.float32)
    bias = torch.as_tensor(np.asarray(node.bias), dtype=torch.float32) if node.bias is not None else None
    has_bias = bias is not None and bool(bias.ne(0).any())
    binary = _meta(node, "bso_layer") == "binary_conv" and not has_bias
    cls = BinaryConv2d if binary else OnlineConv2d
    pair = lambda v: tuple(int(a) for a in np.broadcast_to(np.asarray(v), (2,)))  # noqa: E731
    if isinstance(node.padding, str):
        raise NIRExportError(f"node {name!r}: string padding {node.padding!r} is not imported")
    conv = cls(weight.shape[1] * int(node.groups), weight.shape[0], tuple(weight.shape[2:]),
               stride=pair(node.stride), padding=pair(node.padding), dilation=pair(node.dilation),
               groups=int(node.groups), bias=has_bias)
    conv.weight.data.copy_(weight)
    if has_bias:
        conv.bias.data.copy_(bias)
    return conv


def _import_lif(node: nir.LIF, name: str, dt: Optional[float]) -> nn.Module:
    decay = _meta(node, "decay")
    node_dt = _meta(node, "dt", dt)
    if decay is None:
        if node_dt is None:
            raise NIRExportError(f"node {name!r}: LIF without 'decay' metadata needs the graph's dt")
        decay = 1.0 - node_dt / _unique(np.asarray(node.tau), "tau", name)
        gain = _unique(np.asarray(node.r), "r", name) * node_dt / _unique(np.asarray(node.tau), "tau", name)
        if not math.isclose(gain, 1.0, rel_tol=1e-6):
            raise NIRExportError(f"node {name!r}: R·dt/τ = {gain:g}; our LIF does not scale its input (needs 1)")
    if not np.allclose(node.v_leak, 0.0):
        raise NIRExportError(f"node {name!r}: v_leak must be 0")
    if _meta(node, "reset", "zero") != "subtract":
        raise NIRExportError(f"node {name!r}: a LIF with reset to v_reset (NIR's default) has no layer here; "
                             "only graphs exported with reset='subtract' metadata are imported")
    return OnlineLIFNode(decay=float(decay), v_threshold=_unique(np.asarray(node.v_threshold), "v_threshold", name))


def _is_chain(graph: nir.NIRGraph) -> bool:
    try:
        _chain(graph)
    except NIRExportError:
        return False
    return True


def _import_by_arch(graph: nir.NIRGraph, arch: str, kwargs: dict[str, Any]) -> nn.Sequential:
    """Rebuild ``arch`` and load every node's parameters into the module of the same name (residual graphs)."""
    from bso_lightning.models import build_model

    if _meta(graph, "batchnorm") == "fold":
        raise NIRExportError("a residual graph exported with batchnorm='fold' cannot be rebuilt exactly "
                             "(its convs have no bias); export it with batchnorm='separate'")
    _check_arch_metadata(arch, kwargs)
    model = build_model(arch, **kwargs)
    modules = dict(model.named_modules())
    loaded: set[str] = set()
    for name, node in graph.nodes.items():
        if isinstance(node, (nir.Input, nir.Output)):
            continue
        module = modules.get(name)
        if module is None:
            raise NIRExportError(f"node {name!r} has no module of that name in {arch}(**{kwargs})")
        module = module.module if isinstance(module, SpikeTraceMap) else module
        if isinstance(node, nir.Conv2d):
            fresh = _import_conv(node, name)
            if type(fresh) is not type(module) and not (isinstance(fresh, nn.Conv2d) and isinstance(module, nn.Conv2d)):
                raise NIRExportError(f"node {name!r}: a {type(fresh).__name__} where {arch} has a {type(module).__name__}")
            state = fresh.state_dict()
            if isinstance(module, nn.BatchNorm2d):
                state["num_batches_tracked"] = module.num_batches_tracked
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise NIRExportError(f"node {name!r} does not fit {arch}'s {name}: {exc}") from exc
        elif isinstance(node, nir.Affine):
            module.weight.data.copy_(torch.as_tensor(np.asarray(node.weight), dtype=torch.float32))
            module.bias.data.copy_(torch.as_tensor(np.asarray(node.bias), dtype=torch.float32))
        elif isinstance(node, nir.LIF):
            lif = _import_lif(node, name, _meta(graph, "dt"))
            if (lif.decay, lif.v_threshold) != (module.decay, module.v_threshold):
                raise NIRExportError(f"node {name!r}: λ, Vth = {lif.decay}, {lif.v_threshold} differ from {arch}'s")
        loaded.add(name)
    missing = [n for n, m in modules.items() if n not in loaded and any(True for _ in m.parameters(recurse=False))]
    if missing:
        raise NIRExportError(f"the graph has no node for {arch}'s layers {missing[:5]}")
    return model.eval()


def _check_arch_metadata(arch: str, kwargs: Any) -> None:
    """The graph's ``arch``/``arch_kwargs`` metadata held to the packed loader's bounds (a known factory, its own
    arguments, bounded plain values) and the model they describe to ``MAX_MODEL_VALUES`` (counted on the ``meta``
    device) before it is built: ``NIRExportError`` naming the field."""
    from bso_lightning.export import PackedModelError, _check_spec
    from bso_lightning.checkpoints import MAX_MODEL_VALUES
    from bso_lightning.models import build_model

    try:
        _check_spec("metadata", arch, kwargs)
    except PackedModelError as exc:
        raise NIRExportError(str(exc).replace("header.kwargs", "arch_kwargs").replace("header.arch", "arch")) from None
    with torch.device("meta"):
        values = sum(t.numel() for t in build_model(arch, **kwargs).state_dict().values())
    if values > MAX_MODEL_VALUES:
        raise NIRExportError(f"metadata: arch_kwargs: {arch}(**{kwargs}) has {values:,} values, more than the "
                             f"{MAX_MODEL_VALUES:,} allowed; not built")


def import_nir(graph: Union[nir.NIRGraph, PathLike]) -> nn.Sequential:
    """Our network (``nn.Sequential`` of this library's layers, eval mode) from a NIR graph made by :func:`export_nir`.

    The result computes exactly what the exported model computed: same layers, same BatchNorm parameters
    (from the nodes' metadata), same neuron dynamics (soft reset, λ from the metadata). A chain is built
    node by node; a residual graph (resnet18) is rebuilt from its ``arch`` metadata and filled node by node.
    """
    if not isinstance(graph, nir.NIRGraph):
        path = graph
        graph = read_nir(path)
        try:
            return import_nir(graph)
        except NIRExportError as exc:
            raise NIRExportError(f"{path}: {exc}") from None  # (the file, named once)
    if not _is_chain(graph):
        arch = _meta(graph, "arch")
        if arch is None:
            _chain(graph)  # raises, naming the node where the chain branches
        try:
            kwargs = json.loads(_meta(graph, "arch_kwargs", "{}"))
        except (TypeError, ValueError, RecursionError) as exc:
            raise NIRExportError(f"metadata: arch_kwargs: not a JSON object ({exc})") from None
        return _import_by_arch(graph, str(arch), kwargs)
    dt = _meta(graph, "dt")
    layers: list[nn.Module] = []
    for name in _chain(graph):
        node = graph.nodes[name]
        if isinstance(node, nir.Conv2d):
            layers.append(_import_conv(node, name))
        elif isinstance(node, nir.LIF):
            layers.append(_import_lif(node, name, dt))
        elif isinstance(node, nir.AvgPool2d):
            k, s, p = (tuple(int(a) for a in np.asarray(v).reshape(-1)) for v in (node.kernel_size, node.stride, node.padding))
            layers.append(SpikeTraceMap(nn.AvgPool2d(k, s if len(s) > 1 else s * 2, p if len(p) > 1 else p * 2)))
        elif isinstance(node, nir.Flatten):
            if int(node.start_dim) != 0 or int(node.end_dim) != -1:
                raise NIRExportError(f"node {name!r}: only Flatten(start_dim=0, end_dim=-1) is imported")
            layers.append(SpikeTraceMap(nn.Flatten()))
        elif isinstance(node, (nir.Affine, nir.Linear)):
            w = torch.as_tensor(np.asarray(node.weight), dtype=torch.float32)
            lin = OnlineLinear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
            lin.weight.data.copy_(w)
            if isinstance(node, nir.Affine):
                lin.bias.data.copy_(torch.as_tensor(np.asarray(node.bias), dtype=torch.float32))
            layers.append(lin)
        else:
            raise NIRExportError(f"node {name!r} ({type(node).__name__}) is not imported")
    return nn.Sequential(*layers).eval()


def export_checkpoint_nir(checkpoint: PathLike, out: PathLike, input_shape: Sequence[int],
                          dt: float = DEFAULT_DT, batchnorm: BatchNormMode = "separate") -> int:
    """Export the network of an ``OnlineClassifier`` Lightning checkpoint to a ``.nir`` file; returns its size.

    The checkpoint is read and its model built as for the packed export (:func:`bso_lightning.export.model_to_export`:
    ``weights_only=True``, size bounds before building): a ``CheckpointError`` (a ``ValueError``) names the file.
    """
    from bso_lightning.export import model_to_export

    checkpoint = Path(checkpoint)
    model, hparams, arch, kwargs = model_to_export(checkpoint, out)
    try:
        graph = export_nir(model.eval(), input_shape, dt=dt, batchnorm=batchnorm, time_steps=hparams.get("time_steps"),
                           arch=arch, arch_kwargs=kwargs)
    except RuntimeError as exc:  # the network cannot take such inputs (channels, or too small for its pooling)
        reason = " ".join(str(exc).split())[:300]
        raise ValueError(f"{checkpoint}: {arch} does not take inputs of shape {list(input_shape)} (input_shape is "
                         f"[C, H, W] of one training sample): {reason}") from exc
    return write_nir(graph, out)
