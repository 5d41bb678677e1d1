"""The embedded default task: scikit-learn's 1,797 handwritten 8x8 digits (no download)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import TensorDataset

from datamodules.base import BaseDataModule, check_at_least


class DigitsDataModule(BaseDataModule):
    """``sklearn.datasets.load_digits`` as a 10-class, 1-channel image task.

    Pixels (0..16) are scaled to [0, 1] and upsampled bilinearly to ``image_size``. The
    train/val/test split (``val_fraction``, ``test_fraction``) is seeded and stratified by class,
    so it is the same on every run and machine.
    """

    num_classes = 10
    in_channels = 1

    def __init__(
        self,
        batch_size: int = 32,
        image_size: int = 16,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(root=".", batch_size=batch_size, num_workers=num_workers, seed=seed)
        check_at_least("image_size", image_size, 8, "(the digits are 8x8)")
        if not (0.0 < val_fraction < 1.0 and 0.0 < test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
            raise ValueError(
                "val_fraction and test_fraction must lie in (0, 1) and sum to less than 1, "
                f"got {val_fraction} and {test_fraction}"
            )
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        if self.image_size != 8:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        labels = torch.tensor(digits.target, dtype=torch.int64)
        train_idx, val_idx, test_idx = self._stratified_indices(labels)
        self.train_set = TensorDataset(images[train_idx], labels[train_idx])
        self.val_set = TensorDataset(images[val_idx], labels[val_idx])
        self.test_set = TensorDataset(images[test_idx], labels[test_idx])

    def _stratified_indices(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per class, a seeded permutation cut into test, val and train (each fraction rounded per class)."""
        # kept instead of sklearn's train_test_split(stratify=...): that draws another split (numpy RNG, other
        # rounding), which would change every digits figure recorded in README and benchmarks/results/
        generator = torch.Generator().manual_seed(self.seed)
        parts: tuple[list, list, list] = ([], [], [])
        for cls in range(self.num_classes):
            idx = torch.nonzero(labels == cls).flatten()
            idx = idx[torch.randperm(len(idx), generator=generator)]
            n_test = round(len(idx) * self.test_fraction)
            n_val = round(len(idx) * self.val_fraction)
            parts[2].append(idx[:n_test])
            parts[1].append(idx[n_test : n_test + n_val])
            parts[0].append(idx[n_test + n_val :])
        return tuple(torch.cat(p).sort().values for p in parts)  # type: ignore[return-value]
