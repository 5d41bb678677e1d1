"""Building blocks shared by the models: conv → BatchNorm → online LIF units."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from bso_lightning.nn import BinaryConv2d, OnlineConv2d, OnlineLIFNode
from bso_lightning.nn.neuron import TraceMode


@dataclass(frozen=True)
class NeuronConfig:
    """LIF settings shared by every neuron of a model (paper defaults: λ = 0.5, Vth = 1, OTTT trace)."""

    decay: float = 0.5
    v_threshold: float = 1.0
    trace: TraceMode = "ottt"
    surrogate_alpha: float = 4.0

    def make(self) -> OnlineLIFNode:
        return OnlineLIFNode(**asdict(self))


def conv_bn_lif(in_channels: int, out_channels: int, neuron: NeuronConfig, binary: bool = True,
                kernel_size: int = 3, stride: int = 1) -> list[nn.Module]:
    """A bias-free 3×3 convolution (binary or full precision), BatchNorm, and an online LIF neuron."""
    conv_cls = BinaryConv2d if binary else OnlineConv2d
    conv = conv_cls(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
    return [conv, nn.BatchNorm2d(out_channels), neuron.make()]
