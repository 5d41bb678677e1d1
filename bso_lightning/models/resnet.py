"""Bi-Real-style spiking ResNet-18 (DESIGN.md §1): every binary 3×3 conv has its own real-valued shortcut.

A unit maps a real-valued input current ``x`` to ``BN(BinaryConv(LIF(x))) + shortcut(x)``; the shortcut is
the identity, or AvgPool2d(2) + full-precision 1×1 conv + BN where the shape changes. The stem conv,
the shortcut 1×1 convs, BatchNorm and the classifier are full precision.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from bso_lightning.models.blocks import NeuronConfig
from bso_lightning.nn import BinaryConv2d, OnlineConv2d, OnlineLinear, SpikeTraceMap


class BiRealUnit(nn.Module):
    """LIF → binary 3×3 conv → BN, plus a real-valued shortcut of the input current."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, neuron: NeuronConfig) -> None:
        super().__init__()
        self.neuron = neuron.make()
        self.conv = BinaryConv2d(in_channels, out_channels, 3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            pool = nn.AvgPool2d(stride) if stride != 1 else nn.Identity()
            self.shortcut = nn.Sequential(pool, OnlineConv2d(in_channels, out_channels, 1, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(self.neuron(x))) + self.shortcut(x)


def resnet18(num_classes: int = 1000, in_channels: int = 3, stem: Literal["imagenet", "cifar"] = "imagenet",
             decay: float = 0.5, v_threshold: float = 1.0, trace: str = "ottt") -> nn.Sequential:
    """Binary spiking ResNet-18, Bi-Real style (16 binary units in four stages of 64, 128, 256, 512 channels).

    ``stem="imagenet"``: 7×7/2 conv + BN + 3×3/2 max-pool; ``stem="cifar"``: 3×3 conv + BN (small images).
    """
    neuron = NeuronConfig(decay, v_threshold, trace)  # type: ignore[arg-type]
    if stem == "imagenet":
        layers: list[nn.Module] = [OnlineConv2d(in_channels, 64, 7, stride=2, padding=3, bias=False),
                                   nn.BatchNorm2d(64), nn.MaxPool2d(3, stride=2, padding=1)]
    elif stem == "cifar":
        layers = [OnlineConv2d(in_channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)]
    else:
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    channels = 64
    for stage, width in enumerate((64, 128, 256, 512)):
        for unit in range(4):
            stride = 2 if stage > 0 and unit == 0 else 1
            layers.append(BiRealUnit(channels, width, stride, neuron))
            channels = width
    layers += [neuron.make(), SpikeTraceMap(nn.AdaptiveAvgPool2d(1)), SpikeTraceMap(nn.Flatten()),
               OnlineLinear(channels, num_classes)]
    return nn.Sequential(*layers)
