"""Latent-weight binary layers: the usual BSNN baseline recipe (not BSO).

A full-precision *latent* weight ``w`` is kept and trained by a float optimizer (SGD/Adam); the forward
pass uses ``sign(w)`` (0 → +1, so always ±1) and the backward pass the straight-through estimator
``∂sign(w)/∂w ≈ 1_{|w| ≤ 1}``. After each optimizer step the latent weights are usually clipped to
[−1, 1] (:func:`clip_latent_`). These layers exist for the baselines; BSO/T-BSO need none of this state.

The layers do **not** define ``binary_parameters()``: their latent weight is a full-precision parameter
for the optimizer router (``split_parameters``). They list it through ``latent_parameters()`` instead.

Like :class:`OnlineConv2d`, they accept a plain tensor or a :class:`SpikeTrace` (online training with
latent weights); the binarised weight is computed once per weight version and reused across time steps
(in BPTT the T uses then share one sign node, so autograd keeps one binarised copy, not T).
"""

from __future__ import annotations

from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bso_lightning.nn.layers import OnlineConv2d, OnlineLinear
from bso_lightning.nn.spike_trace import SpikeInput, split_spike_trace
from bso_lightning.nn.trace_ops import TraceConv2dFunction, trace_linear


class SignSTE(torch.autograd.Function):
    """``sign(w)`` (0 → +1) with the straight-through gradient ``grad · 1_{|w| ≤ clip}``.

    The mask is kept on ``ctx`` (not via ``save_for_backward``) so the node may be backpropagated
    through more than once, which happens when the binarised weight is reused by several time steps
    that each call ``backward`` (online training with latent weights).
    """

    @staticmethod
    def forward(ctx, weight: Tensor, clip: float) -> Tensor:
        ctx.mask = weight.detach().abs() <= clip
        return torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.mask.to(grad.dtype), None


def sign_ste(weight: Tensor, clip: float = 1.0) -> Tensor:
    """Binarise ``weight`` to ±1 with the straight-through estimator ``1_{|w| ≤ clip}``."""
    return SignSTE.apply(weight, clip)


class LatentBinaryLayer:
    """Mixin: ``weight`` is a real-valued latent weight; the forward pass sees ``sign(weight)``."""

    weight: nn.Parameter
    ste_clip: float = 1.0

    def latent_parameters(self) -> Iterator[nn.Parameter]:
        """The latent (real-valued) weights of this layer, for clipping after each optimizer step."""
        yield self.weight

    def binary_weight(self) -> Tensor:
        """``sign(weight)`` with the STE, cached while the latent weight and the grad mode are unchanged."""
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype, w.device, torch.is_grad_enabled())
        cache = self.__dict__.get("_binary_cache")
        if cache is None or cache[0] != key:
            cache = (key, sign_ste(w, self.ste_clip))
            self.__dict__["_binary_cache"] = cache
        return cache[1]

    def __getstate__(self):
        # the cache may hold a non-leaf tensor (not deep-copyable / picklable); it is rebuilt on demand
        state = dict(self.__dict__)
        state.pop("_binary_cache", None)
        return state


class LatentBinaryConv2d(LatentBinaryLayer, OnlineConv2d):
    """2-D convolution with a real-valued latent weight, binarised to ±1 in the forward pass (bias-free by default)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)

    def forward(self, x: SpikeInput) -> Tensor:  # type: ignore[override]
        spike, trace = split_spike_trace(x)
        weight = self.binary_weight()
        if trace is None or not torch.is_grad_enabled():
            return F.conv2d(spike, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return TraceConv2dFunction.apply(
            spike, trace, weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class LatentBinaryLinear(LatentBinaryLayer, OnlineLinear):
    """Fully-connected layer with a real-valued latent weight, binarised to ±1 in the forward pass."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias)

    def forward(self, x: SpikeInput) -> Tensor:  # type: ignore[override]
        spike, trace = split_spike_trace(x)
        weight = self.binary_weight()
        if trace is None or not torch.is_grad_enabled():
            return F.linear(spike, weight, self.bias)
        return trace_linear(spike, trace, weight, self.bias)


def latent_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Every latent weight of ``model`` (modules with a ``latent_parameters()`` method), each once."""
    seen: dict[int, nn.Parameter] = {}
    for module in model.modules():
        method = getattr(module, "latent_parameters", None)
        if callable(method):
            for p in method():
                seen.setdefault(id(p), p)
    return list(seen.values())


@torch.no_grad()
def clip_latent_(params: Iterable[Tensor], bound: float = 1.0) -> None:
    """Clip latent weights in place to [−bound, bound] (the usual step after each optimizer update)."""
    params = [p for p in params]
    if params:
        torch._foreach_clamp_min_(params, -bound)
        torch._foreach_clamp_max_(params, bound)


__all__ = ["LatentBinaryConv2d", "LatentBinaryLayer", "LatentBinaryLinear", "SignSTE", "clip_latent_",
           "latent_parameters", "sign_ste"]
