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

from bso_lightning.nn.packed import PackedBinaryParameter, unpack_signs
from bso_lightning.nn.spike_trace import SpikeInput, split_spike_trace
from bso_lightning.nn.trace_ops import TraceConv2dFunction, packed_conv2d, packed_linear, trace_linear

WEIGHT_STORAGES = ("dense", "packed")


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
    """Mixin: the layer's weight is binary (exactly ±1) and is flipped by BSO/T-BSO, never by SGD.

    Storage (``weight_storage``): ``"dense"`` keeps ``weight`` as a float ±1 parameter; ``"packed"`` keeps
    ``weight_bits``, a :class:`~bso_lightning.nn.packed.PackedBinaryParameter` (1 bit per weight), and unpacks it
    for one op at a time. Switch with :meth:`to_packed_` / :meth:`to_dense_`; a state dict of either storage
    loads into either (converted on load). In packed mode reading ``layer.weight`` gives a new ±1 tensor.
    """

    weight: nn.Parameter

    @property
    def weight_storage(self) -> str:
        return "packed" if "weight_bits" in self._parameters else "dense"

    def binary_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters of this layer that BSO/T-BSO own (its weight; a bias stays full precision)."""
        yield self._parameters["weight_bits"] if self.weight_storage == "packed" else self._parameters["weight"]

    def to_packed_(self) -> "BinaryLayer":
        """Store the weight as bits (in place; raises ``ValueError`` if it is not exactly ±1)."""
        if self.weight_storage == "dense":
            weight = self._parameters.pop("weight")
            self.weight_bits = PackedBinaryParameter.from_signs(weight.detach(), f"{type(self).__name__}.weight")
        return self

    def to_dense_(self) -> "BinaryLayer":
        """Store the weight as a float32 ±1 parameter (in place)."""
        if self.weight_storage == "packed":
            bits = self._parameters.pop("weight_bits")
            self.weight = nn.Parameter(bits.signs(torch.float32))
        return self

    def __getattr__(self, name: str):
        if name == "weight" and "weight_bits" in self.__dict__.get("_parameters", {}):
            return self._parameters["weight_bits"].signs(torch.float32)
        return super().__getattr__(name)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """Convert a dense ``weight`` to ``weight_bits`` (or back) when the stored storage differs from ours."""
        dense_key, packed_key = prefix + "weight", prefix + "weight_bits"
        if self.weight_storage == "packed" and dense_key in state_dict and packed_key not in state_dict:
            value = state_dict.pop(dense_key)
            try:
                state_dict[packed_key] = PackedBinaryParameter.from_signs(value, dense_key).data
            except ValueError as error:
                error_msgs.append(str(error))
        elif self.weight_storage == "dense" and packed_key in state_dict and dense_key not in state_dict:
            bits = state_dict.pop(packed_key)
            try:
                state_dict[dense_key] = unpack_signs(bits, self._parameters["weight"].shape, torch.float32)
            except ValueError as error:
                error_msgs.append(f"{packed_key}: {error}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class BinaryConv2d(BinaryLayer, OnlineConv2d):
    """Binary 2-D convolution: weights ±1 from construction (sign of the standard init), bias-free by default."""

    def forward(self, x: SpikeInput) -> Tensor:  # type: ignore[override]
        if self.weight_storage == "dense":
            return super().forward(x)
        spike, trace = split_spike_trace(x)
        return packed_conv2d(spike, trace, self.weight_bits, self.bias, self.stride, self.padding, self.dilation,
                             self.groups)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        binarize_(self.weight)


class BinaryLinear(BinaryLayer, OnlineLinear):
    """Binary fully-connected layer: weights ±1 from construction, bias-free by default."""

    def forward(self, x: SpikeInput) -> Tensor:  # type: ignore[override]
        if self.weight_storage == "dense":
            return super().forward(x)
        spike, trace = split_spike_trace(x)
        return packed_linear(spike, trace, self.weight_bits, self.bias)

    def __init__(self, in_features: int, out_features: int, bias: bool = False) -> None:
        super().__init__(in_features, out_features, bias)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        binarize_(self.weight)


def set_weight_storage_(model: nn.Module, storage: str) -> nn.Module:
    """Store every binary layer's weight of ``model`` as ``"packed"`` bits or ``"dense"`` floats (in place)."""
    if storage not in WEIGHT_STORAGES:
        raise ValueError(f"weight_storage must be one of {WEIGHT_STORAGES}, got {storage!r}")
    for module in model.modules():
        if isinstance(module, BinaryLayer):
            module.to_packed_() if storage == "packed" else module.to_dense_()
    return model
