"""Small transforms the DataModules share that torchvision does not ship."""

from __future__ import annotations

import torch

from datamodules.base import check_at_least


class Cutout(torch.nn.Module):
    """Zero ``n_holes`` random ``length`` x ``length`` squares of a ``[..., H, W]`` tensor.

    DeVries & Taylor (2017), as the BSO authors' scripts use it: applied to the ``[0, 1]`` image
    tensor before normalization, one hole of side 16 on CIFAR. A hole's centre is uniform over the
    image and the square is clipped at the border, so a hole near an edge covers less. Every
    leading dimension (channels, time) gets the same holes.

    Args:
        length: side of each square in pixels (>= 1).
        n_holes: number of squares (>= 1).
    """

    def __init__(self, length: int = 16, n_holes: int = 1) -> None:
        super().__init__()
        check_at_least("Cutout length", length, 1)
        check_at_least("Cutout n_holes", n_holes, 1)
        self.length = length
        self.n_holes = n_holes

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if not isinstance(img, torch.Tensor) or img.ndim < 2:
            raise TypeError("Cutout expects a tensor of shape [..., H, W]; put it after ToTensor()")
        h, w = img.shape[-2:]
        mask = torch.ones(h, w, dtype=img.dtype, device=img.device)
        half = self.length // 2
        for _ in range(self.n_holes):
            cy = int(torch.randint(h, ()))
            cx = int(torch.randint(w, ()))
            mask[max(cy - half, 0) : min(cy + half, h), max(cx - half, 0) : min(cx + half, w)] = 0
        return img * mask

    def extra_repr(self) -> str:
        return f"length={self.length}, n_holes={self.n_holes}"
