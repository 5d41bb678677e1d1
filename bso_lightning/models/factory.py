"""The model factories by name: ``build_model("vgg11", num_classes=10)`` (torchvision-style)."""

from __future__ import annotations

from typing import Callable, Optional

from torch import nn

from bso_lightning.models.resnet import resnet18
from bso_lightning.models.vgg import small_cnn, vgg11
from bso_lightning.nn.time_step_batchnorm import use_time_step_batchnorm_

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"vgg11": vgg11, "resnet18": resnet18, "small_cnn": small_cnn}


def build_model(arch: str, batchnorm_time_steps: Optional[int] = None, **kwargs) -> nn.Module:
    """Build a model by name (one of ``ARCHITECTURES``) with the factory's keyword arguments.

    ``batchnorm_time_steps``: give every BatchNorm running statistics for that many time steps
    (:class:`~bso_lightning.nn.time_step_batchnorm.TimeStepBatchNorm2d`); None: plain BatchNorm."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {arch!r}")
    model = ARCHITECTURES[arch](**kwargs)
    return model if batchnorm_time_steps is None else use_time_step_batchnorm_(model, batchnorm_time_steps)


__all__ = ["ARCHITECTURES", "build_model"]
