"""Re-estimating BatchNorm running statistics with the current binary weights (DESIGN.md §3).

Weights that flip every step leave the running statistics of BatchNorm behind the network they
normalise (and mix the statistics of different time steps). Before evaluation, reset them and
re-estimate them as a plain (cumulative) average over a few training batches with the weights as they
are now: ``torch.optim.swa_utils.update_bn``, over at most ``max_batches`` inputs, leaving out any input
that holds NaN/Inf (it would poison the statistics).
"""

from __future__ import annotations

import itertools
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn


def recalibrate_batchnorm(model: nn.Module, inputs: Iterable[Tensor], max_batches: int) -> int:
    """Reset every BatchNorm's running statistics in ``model`` and re-estimate them over its forward passes on
    the finite ones among the first ``max_batches`` of ``inputs``; returns how many inputs were used.

    ``model(x)`` must run the whole forward (all time steps) of one input batch ``x``. The model's training mode
    and every BatchNorm's momentum are restored (``update_bn``). ``max_batches <= 0`` changes nothing.
    """
    used = 0

    def finite() -> Iterator[Tensor]:
        nonlocal used
        for x in itertools.islice(inputs, max_batches):
            if bool(torch.isfinite(x).all()):
                used += 1
                yield x

    if max_batches > 0:
        update_bn(finite(), model)
    return used


__all__ = ["recalibrate_batchnorm"]
