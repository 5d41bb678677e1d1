"""The model factories by name: ``build_model("vgg11", num_classes=10)`` (torchvision-style)."""

from __future__ import annotations

from typing import Callable

from torch import nn

from bso_lightning.models.resnet import resnet18
from bso_lightning.models.vgg import small_cnn, vgg11

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"vgg11": vgg11, "resnet18": resnet18, "small_cnn": small_cnn}


def build_model(arch: str, **kwargs) -> nn.Module:
    """Build a model by name (one of ``ARCHITECTURES``) with the factory's keyword arguments."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    return ARCHITECTURES[arch](**kwargs)


__all__ = ["ARCHITECTURES", "build_model"]
