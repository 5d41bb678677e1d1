"""Pooling whose factor follows the input size: keeps a small network's feature maps at a size it can see whole."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn


class StemPool(nn.Module):
    """Average-pool an ``H×W`` map by the smallest integer factor k with ``max(H, W) / k <= max_size``.

    k = ceil(max(H, W) / max_size); a map of at most ``max_size`` pixels per side passes unchanged (k = 1).
    Used after the first (full-precision) block of ``small_cnn``: on 28×28 MNIST (k = 2) the binary layers then
    see the whole digit within their receptive field and train as fast as on 14×14 (docs/hyperparameters.md).
    Remainder rows/columns are dropped, as ``nn.AvgPool2d`` does.
    """

    def __init__(self, max_size: int = 16) -> None:
        super().__init__()
        if not isinstance(max_size, int) or isinstance(max_size, bool) or max_size < 1:
            raise ValueError(f"max_size must be an int >= 1, got {max_size!r}")
        self.max_size = max_size

    def factor(self, height: int, width: int) -> int:
        """The pooling factor k for an ``height × width`` map."""
        return max(1, math.ceil(max(height, width) / self.max_size))

    def forward(self, x: Tensor) -> Tensor:
        k = self.factor(x.shape[-2], x.shape[-1])
        return x if k == 1 else F.avg_pool2d(x, k)

    def extra_repr(self) -> str:
        return f"max_size={self.max_size}"


__all__ = ["StemPool"]
