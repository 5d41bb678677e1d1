"""Weighted layers for online training: full-precision and binary (weights exactly ±1).

Every layer accepts a plain tensor (ordinary op) or a :class:`SpikeTrace` (forward on the spikes,
weight gradient from the trace; paper Eq. 6–7). Binary layers claim their weight through
``binary_parameters()``; the optimizer router (``bso_lightning.optim.split_parameters``) reads that.
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bso_lightning.nn.spike_trace import SpikeInput, split_spike_trace
from bso_lightning.nn.trace_ops import TraceConv2dFunction, trace_linear


class OnlineConv2d(nn.Conv2d):
    """``nn.Conv2d`` that uses the presynaptic trace for its weight gradient when given one."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if isinstance(self.padding, str) or self.padding_mode != "zeros":
            raise ValueError(
                f"{type(self).__name__} supports integer zero padding only, "
                f"got padding={self.padding!r}, padding_mode={self.padding_mode!r}"
            )

    def forward(self, x: SpikeInput) -> Tensor:  # type: ignore[override]
        spike, trace = split_spike_trace(x)
        if trace is None or not torch.is_grad_enabled():
            return F.conv2d(spike, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return TraceConv2dFunction.apply(
            spike, trace, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )


class OnlineLinear(nn.Linear):
    """``nn.Linear`` that uses the presynaptic trace for its weight gradient when given one."""

    def forward(self, x: SpikeInput) -> Tensor:  # type: ignore[override]
        spike, trace = split_spike_trace(x)
        if trace is None or not torch.is_grad_enabled():
            return F.linear(spike, self.weight, self.bias)
        return trace_linear(spike, trace, self.weight, self.bias)


@torch.no_grad()
def binarize_(weight: Tensor) -> Tensor:
    """Replace ``weight`` in place by its sign, mapping 0 to +1 (never 0)."""
    return weight.copy_(torch.where(weight >= 0, 1.0, -1.0).to(weight.dtype))


class BinaryLayer:
    """Mixin: the layer's ``weight`` is binary (exactly ±1) and is flipped by BSO/T-BSO, never by SGD."""

    weight: nn.Parameter

    def binary_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of this layer that BSO/T-BSO own (its weight; a bias stays full precision)."""
        yield self.weight


class BinaryConv2d(BinaryLayer, OnlineConv2d):
    """Binary 2-D convolution: weights ±1 from construction (sign of the standard init), bias-free by default."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        binarize_(self.weight)


class BinaryLinear(BinaryLayer, OnlineLinear):
    """Binary fully-connected layer: weights ±1 from construction, bias-free by default."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        binarize_(self.weight)
