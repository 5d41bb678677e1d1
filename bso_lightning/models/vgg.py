"""VGG-11 as in the paper (DESIGN.md §1): 64C3-128C3-AP2-256C3-256C3-AP2-512C3-512C3-AP2-512C3-512C3-GAP-FC."""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence, Union

from torch import nn

from bso_lightning.models.blocks import NeuronConfig, conv_bn_lif
from bso_lightning.nn import OnlineLinear, SpikeTraceMap
from bso_lightning.nn.pooling import StemPool

VGG11_LAYOUT: tuple[Union[int, str], ...] = (64, 128, "A", 256, 256, "A", 512, 512, "A", 512, 512)


def spiking_vgg(layout: Sequence[Union[int, str, nn.Module]], num_classes: int, in_channels: int,
                neuron: NeuronConfig) -> nn.Sequential:
    """A VGG-style BSNN: each int is a conv (first full precision, rest binary) + BN + LIF; "A" is AvgPool2d(2);
    a module (a parameter-free pooling such as :class:`StemPool`) is applied to the spikes and traces as it is.

    Ends with global average pooling and a full-precision linear classifier (with bias). Layers are named by their
    index ("0", "1", ...) except a module item, named ``stem_pool`` without taking an index: the names of the
    weights (``3.weight``, ...) and so older checkpoints and logged names do not depend on it.
    """
    layers: list[tuple[str, nn.Module]] = []

    def add(*modules: nn.Module) -> None:
        for module in modules:
            layers.append((str(sum(name.isdigit() for name, _ in layers)), module))

    channels = in_channels
    first = True
    for item in layout:
        if isinstance(item, nn.Module):
            layers.append(("stem_pool", SpikeTraceMap(item)))
        elif item == "A":
            add(SpikeTraceMap(nn.AvgPool2d(2)))
        else:
            add(*conv_bn_lif(channels, int(item), neuron, binary=not first))
            channels = int(item)
            first = False
    add(SpikeTraceMap(nn.AdaptiveAvgPool2d(1)), SpikeTraceMap(nn.Flatten()), OnlineLinear(channels, num_classes))
    return nn.Sequential(OrderedDict(layers))


def vgg11(num_classes: int = 10, in_channels: int = 3, decay: float = 0.5, v_threshold: float = 1.0,
          trace: str = "ottt") -> nn.Sequential:
    """The paper's binary spiking VGG-11 (first conv and classifier full precision, hidden convs binary)."""
    return spiking_vgg(VGG11_LAYOUT, num_classes, in_channels, NeuronConfig(decay, v_threshold, trace))  # type: ignore[arg-type]


def small_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 16, decay: float = 0.5,
              v_threshold: float = 1.0, trace: str = "ottt", stem_max_size: Optional[int] = 16) -> nn.Sequential:
    """A small BSNN for any image size: w-[stem pool]-2w-AP2-4w-AP2-GAP-FC (first conv and FC full precision).

    ``width`` 16 (the quick start's; it was 32 before issue 10: 2.5× slower per epoch for the same ≥ 98% on digits).
    ``stem_max_size``: after the first block, average-pool the map to at most this many pixels per side
    (:class:`~bso_lightning.nn.pooling.StemPool`; inputs up to 16×16, the digits, pass unchanged; ``None``: never).
    Measured reason (docs/hyperparameters.md): without it, MNIST at its native 28×28 trains the binary layers far
    more slowly than at 14×14 (T-BSO, 30k images, 1 epoch: 71% running training accuracy against 91% with it)."""
    stem = () if stem_max_size is None else (StemPool(stem_max_size),)
    layout = (width, *stem, 2 * width, "A", 4 * width, "A")
    return spiking_vgg(layout, num_classes, in_channels, NeuronConfig(decay, v_threshold, trace))  # type: ignore[arg-type]
