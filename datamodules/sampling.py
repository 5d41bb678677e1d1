"""A shuffling sampler whose order depends only on (seed, epoch), so resumed runs see the same batches, a
training DataLoader whose position inside the epoch is saved in checkpoints (exact mid-epoch resume), and how a
data error in a worker process reaches the main process as itself (:class:`FailedSample`)."""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Iterable, Iterator, Optional, Sized

import torch
from torch.utils.data import DataLoader, Sampler, default_collate


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


class FailedSample:
    """What a dataset returns instead of a sample it cannot read: the error (picklable), so that it crosses from a
    DataLoader worker to the main process intact. Raised in the worker, PyTorch would re-raise it there as a
    ``RuntimeError`` holding the worker's whole traceback as its message."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class FailedBatch(list):
    """A batch with at least one :class:`FailedSample` (built by :func:`collate_or_fail`, raised by the loaders)."""


def collate_or_fail(samples: list[Any]) -> Any:
    """``default_collate``, except that a batch holding a :class:`FailedSample` becomes a :class:`FailedBatch`."""
    failed = [s for s in samples if isinstance(s, FailedSample)]
    return FailedBatch(failed) if failed else default_collate(samples)


def raise_failed(batch: Any) -> Any:
    """``batch``, or the first error of a :class:`FailedBatch` raised (in the main process)."""
    if isinstance(batch, FailedBatch):
        raise batch[0].error
    return batch


class CheckedDataLoader(DataLoader):
    """A DataLoader that raises the error of a sample that could not be read (:class:`FailedSample`) as itself."""

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return map(raise_failed, super().__iter__())


class ResumableDataLoader(CheckedDataLoader):
    """A training DataLoader that Lightning checkpoints mid-epoch and resumes exactly.

    Lightning stores ``state_dict()`` of a training DataLoader that has one in every checkpoint
    (``{"epoch", "batches", "batch_size"}``: the batches handed out so far in the current epoch) and hands it back
    to ``load_state_dict`` when it resumes. The next pass over that same epoch then skips the batches
    already trained on (only their indices are drawn, no sample is read), so a run resumed from a
    mid-epoch checkpoint sees exactly the batches an uninterrupted run would.

    * The epoch is read from the sampler (``sampler.epoch``, which Lightning sets through
      ``set_epoch``); a pass starts lazily at its first batch, after Lightning has set the epoch, so
      worker processes draw the right order too.
    * Under DDP Lightning wraps the sampler in a distributed one; the skip applies to this rank's
      batches, after that split.
    * The dataset must be sized (map-style): Lightning then fetches exactly the batches it trains on.
    """

    _resume_from: Optional[tuple[Optional[int], int, Optional[int]]] = None
    _epoch: Optional[int] = None
    _yielded: int = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "batches": self._yielded, "batch_size": self.batch_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_from = (state_dict["epoch"], int(state_dict["batches"]), state_dict.get("batch_size"))

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._pass()

    def _pass(self) -> Iterator[Any]:
        epoch, skip = _sampler_epoch(self), 0
        if self._resume_from is not None:
            saved_epoch, saved_batches, saved_size = self._resume_from
            self._resume_from = None
            skip = saved_batches if saved_epoch == epoch else 0
            _check_resumed_batch_size(saved_size, self.batch_size, skip, epoch)
        self._epoch, self._yielded = epoch, skip
        batches = DataLoader.__iter__(self) if skip == 0 else iter(self._skipping(skip))
        for batch in batches:
            self._yielded += 1
            yield raise_failed(batch)

    def _skipping(self, skip: int) -> DataLoader:
        """A one-pass plain DataLoader over the same data and settings that leaves out the first ``skip`` batches."""
        settings = {name: getattr(self, name) for name in _LOADER_SETTINGS if hasattr(self, name)}
        if self.num_workers == 0:
            settings.pop("prefetch_factor", None)
        if self.batch_sampler is not None:
            return DataLoader(self.dataset, batch_sampler=_Skip(self.batch_sampler, skip), **settings)
        return DataLoader(self.dataset, batch_size=None, sampler=_Skip(self.sampler, skip), **settings)


def _check_resumed_batch_size(saved: Optional[int], current: Optional[int], skip: int, epoch: Optional[int]) -> None:
    """A run resumed with another batch size than its checkpoint's: mid-epoch (``skip`` batches to leave out) a
    ``ValueError`` naming both (the samples already trained are counted in batches of the saved size, so they could
    not be skipped exactly); at an epoch boundary one warning (the batches to come differ from an uninterrupted
    run's, and a ``run_*`` schedule's length in batches changes). Checkpoints without a saved size: not checked."""
    if saved is None or current is None or saved == current:
        return
    if skip > 0:
        raise ValueError(f"the checkpoint was saved after {skip} batches of batch_size={saved} in epoch {epoch}; this "
                         f"run has batch_size={current}, so the samples already trained cannot be skipped exactly. "
                         f"Resume with batch_size={saved}, or from an end-of-epoch checkpoint")
    warnings.warn(f"resumed with batch_size={current}, the checkpoint was trained with batch_size={saved}: the run "
                  "continues from the epoch boundary, but its batches (and a run_* schedule's length in batches) "
                  "differ from an uninterrupted run's", UserWarning, stacklevel=3)


_LOADER_SETTINGS = ("num_workers", "collate_fn", "pin_memory", "timeout", "worker_init_fn",
                    "multiprocessing_context", "generator", "prefetch_factor", "pin_memory_device", "in_order")


def _sampler_epoch(loader: DataLoader) -> Optional[int]:
    for sampler in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if getattr(sampler, "epoch", None) is not None:
            return int(sampler.epoch)
    return None


class _Skip:
    """Iterate ``source`` (a sampler or batch sampler) without its first ``count`` items."""

    def __init__(self, source: Iterable[Any], count: int) -> None:
        self.source, self.count = source, count

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.source), self.count, None)

    def __len__(self) -> int:
        return max(len(self.source) - self.count, 0)  # type: ignore[arg-type]
