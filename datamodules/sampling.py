"""A shuffling sampler whose order depends only on (seed, epoch), so resumed runs see the same batches."""

from __future__ import annotations

from typing import Iterator, Sized

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """Random permutation drawn from ``seed + epoch``; Lightning calls ``set_epoch`` at every epoch start.

    Unlike ``shuffle=True`` (which draws from the global RNG), the order of epoch ``e`` is the same in an
    uninterrupted run and in a run resumed from a checkpoint.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.data_source = data_source
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=generator).tolist())

    def __len__(self) -> int:
        return len(self.data_source)
