"""Re-estimating BatchNorm running statistics with the current binary weights (DESIGN.md §3).

Weights that flip every step leave the running statistics of BatchNorm behind the network they
normalise (and mix the statistics of different time steps). Before evaluation, reset them and
re-estimate them as a plain average over a few training batches with the weights as they are now.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, forward: Callable[[object], object],
                          max_batches: int) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them over ``max_batches`` batches.

    ``forward(batch)`` runs the model on one batch (all time steps). Returns the number of batches used.
    The model is left in the training mode it had; momentum of every BatchNorm is restored.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or max_batches <= 0:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over all forwards
    model.train()
    used = 0
    try:
        for batch in batches:
            if used >= max_batches:
                break
            forward(batch)
            used += 1
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return used
