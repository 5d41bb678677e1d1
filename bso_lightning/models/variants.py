"""Model variants for the baselines: the same architectures with other weights or neurons.

Every factory (``vgg11``, ``resnet18``, ``small_cnn``) builds the binary online model of the paper. The
baselines use the same layout with

* ``weights="latent"``: every :class:`BinaryConv2d`/:class:`BinaryLinear` replaced by a layer with a
  real-valued latent weight binarised by sign + STE (:mod:`bso_lightning.nn.latent`);
* ``weights="full_precision"``: replaced by :class:`OnlineConv2d`/:class:`OnlineLinear` (real-valued weights);
* ``neuron="bptt"``: every :class:`OnlineLIFNode` replaced by :class:`BPTTLIFNode` (no detach between steps).

Replacement layers get the standard PyTorch initialisation of their class (not the ±1 of the binary model);
shapes, strides, padding and the neuron settings (λ, Vth, surrogate α) are carried over.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from bso_lightning.models.factory import build_model
from bso_lightning.nn import BinaryConv2d, BinaryLinear, OnlineConv2d, OnlineLIFNode, OnlineLinear
from bso_lightning.nn.bptt import BPTTLIFNode
from bso_lightning.nn.latent import LatentBinaryConv2d, LatentBinaryLinear

WeightVariant = Literal["binary", "latent", "full_precision"]
NeuronVariant = Literal["online", "bptt"]
WEIGHT_VARIANTS = ("binary", "latent", "full_precision")
NEURON_VARIANTS = ("online", "bptt")


def _conv_like(old: nn.Conv2d, cls: type) -> nn.Conv2d:
    new = cls(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride, padding=old.padding,
              dilation=old.dilation, groups=old.groups, bias=old.bias is not None)
    return new.to(device=old.weight.device, dtype=old.weight.dtype)


def _linear_like(old: nn.Linear, cls: type) -> nn.Linear:
    new = cls(old.in_features, old.out_features, bias=old.bias is not None)
    return new.to(device=old.weight.device, dtype=old.weight.dtype)


def _replace(model: nn.Module, convert) -> nn.Module:
    """Replace every submodule ``m`` for which ``convert(m)`` returns a module (the root is never replaced)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = convert(child)
            if new is not None:
                setattr(parent, name, new)
    return model


def convert_weights(model: nn.Module, weights: WeightVariant) -> nn.Module:
    """Swap the binary layers of ``model`` (in place) for latent-weight or full-precision ones; returns it."""
    if weights not in WEIGHT_VARIANTS:
        raise ValueError(f"weights must be one of {WEIGHT_VARIANTS}, got {weights!r}")
    if weights == "binary":
        return model
    conv_cls = LatentBinaryConv2d if weights == "latent" else OnlineConv2d
    linear_cls = LatentBinaryLinear if weights == "latent" else OnlineLinear

    def convert(m: nn.Module):
        if isinstance(m, BinaryConv2d):
            return _conv_like(m, conv_cls)
        if isinstance(m, BinaryLinear):
            return _linear_like(m, linear_cls)
        return None

    return _replace(model, convert)


def convert_neurons(model: nn.Module, neuron: NeuronVariant) -> nn.Module:
    """Swap every online LIF neuron of ``model`` (in place) for a BPTT one (``neuron="bptt"``); returns it."""
    if neuron not in NEURON_VARIANTS:
        raise ValueError(f"neuron must be one of {NEURON_VARIANTS}, got {neuron!r}")
    if neuron == "online":
        return model

    def convert(m: nn.Module):
        if isinstance(m, OnlineLIFNode) and not isinstance(m, BPTTLIFNode):
            return BPTTLIFNode(decay=m.decay, v_threshold=m.v_threshold,
                               surrogate_alpha=float(getattr(m.surrogate_function, "alpha", 4.0)))
        return None

    return _replace(model, convert)


def build_variant(arch: str, weights: WeightVariant = "binary", neuron: NeuronVariant = "online",
                  **kwargs) -> nn.Module:
    """``build_model(arch, **kwargs)`` with its binary layers and neurons swapped as requested."""
    if weights not in WEIGHT_VARIANTS:
        raise ValueError(f"weights must be one of {WEIGHT_VARIANTS}, got {weights!r}")
    if neuron not in NEURON_VARIANTS:
        raise ValueError(f"neuron must be one of {NEURON_VARIANTS}, got {neuron!r}")
    return convert_neurons(convert_weights(build_model(arch, **kwargs), weights), neuron)


__all__ = ["NEURON_VARIANTS", "WEIGHT_VARIANTS", "build_variant", "convert_neurons", "convert_weights"]
