"""The per-time-step loss of the paper (Eq. 8)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def online_loss(output: Tensor, target: Tensor, time_steps: int, mse_weight: float = 0.05) -> Tensor:
    """L[t] = ((1 − α)·CE(o[t], y) + α·MSE(o[t], onehot(y))) / T  with α = ``mse_weight``."""
    ce = F.cross_entropy(output, target)
    if mse_weight == 0.0:
        return ce / time_steps
    onehot = F.one_hot(target, output.shape[-1]).to(output.dtype)
    return ((1.0 - mse_weight) * ce + mse_weight * F.mse_loss(output, onehot)) / time_steps
