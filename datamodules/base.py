"""Shared base for every DataModule: batch size, workers, seeded shuffling, pin-memory.

Batch layout (the one place it is defined; the LightningModule reads it through
:func:`bso_lightning.tasks.batch.input_at_time_step`):

* static data (images, spectrograms): ``x`` has shape ``[B, C, H, W]`` and is presented as the
  same real-valued input current at every time step;
* event / sequence data (CIFAR10-DVS): ``x`` has shape ``[B, T, C, H, W]``, frame ``t`` is the input
  at time step ``t``; ``T`` must equal the model's number of time steps.

``y`` is always an ``int64`` tensor of class indices with shape ``[B]``.

Every DataModule sets ``num_classes`` and ``in_channels`` (the ``C`` above) as instance attributes
by the end of ``__init__`` (before ``setup``), so the CLI can link them to the model. ``time_steps``
is ``None`` for static data (shown for however many steps the model runs) and the number of frames
``T`` for event data.

Missing data raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``) that names the folder,
what was expected in it and how to get it; build it with :func:`dataset_not_found`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import lightning as L
from torch.utils.data import DataLoader, Dataset

from bso_lightning.errors import UserDataError
from datamodules.sampling import CheckedDataLoader, EpochSeededSampler, ResumableDataLoader, collate_or_fail


class DatasetNotFoundError(FileNotFoundError):
    """A dataset folder is missing or incomplete (and ``download`` is off or impossible).

    ``folder`` holds the folder that was searched.
    """

    def __init__(self, message: str, folder: str | Path) -> None:
        super().__init__(message)
        self.folder = Path(folder)


class DataFileError(UserDataError):
    """One data file (audio, events, pickle) is unreadable or malformed; ``path`` names it."""

    def __init__(self, path: str | Path, reason: str, remedy: str = "") -> None:
        self.path, self.reason, self.remedy = Path(path), reason, remedy
        message = f"cannot read {self.path}: {reason}"
        super().__init__(f"{message}. {remedy}" if remedy else message)

    def __reduce__(self):  # picklable (a DataLoader worker hands it to the main process: sampling.FailedSample)
        return type(self), (self.path, self.reason, self.remedy)


def file_stamp(path: Path) -> str:
    """``"<size>:<mtime_ns>"`` of a file (``"missing"``): what a cache fingerprint records of its content (a file
    replaced or edited under the same name changes it; hashing every file's bytes would read the whole dataset)."""
    try:
        st = path.stat()
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def check_at_least(name: str, value, minimum, note: str = "") -> None:
    """Raise ``ValueError("<name> must be >= <minimum> <note>, got <value>")`` when ``value < minimum``: the check of
    every DataModule argument with a lower bound (``note`` says what the bound means, e.g. ``"(0 = no cutout)"``)."""
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{' ' + note if note else ''}, got {value}")


def dataset_not_found(
    name: str, folder: str | Path, expected: str, how: str, problem: str | None = None
) -> DatasetNotFoundError:
    """Build the one error every DataModule raises for missing data.

    Args:
        name: the dataset, e.g. ``"CIFAR-10"``.
        folder: the folder that was searched.
        expected: what should be in it (files, sub-folders).
        how: how to get it (``download=True``, a URL, a script).
        problem: what exactly is wrong, when more is known than "not found".
    """
    folder = Path(folder)
    detail = problem or ("folder does not exist" if not folder.exists() else "folder is incomplete")
    message = (
        f"{name} not found in {folder} ({detail}). Expected: {expected}. How to get it: {how}"
    )
    return DatasetNotFoundError(message, folder)


class BaseDataModule(L.LightningDataModule):
    """Base class; subclasses set ``num_classes``, ``in_channels`` and build the datasets in ``setup``.

    Args:
        root: folder the dataset is read from (and downloaded to, where supported).
        batch_size: samples per batch for every split.
        num_workers: DataLoader worker processes.
        pin_memory: pin host memory for faster host-to-GPU copies.
        seed: seed of the training order (:class:`EpochSeededSampler`, with the epoch) and of the splits a
            subclass draws, so both are identical on every run and machine.
    """

    num_classes: int
    in_channels: int
    time_steps: Optional[int] = None

    def __init__(
        self,
        root: str | Path = "data",
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_at_least("batch_size", batch_size, 1)
        check_at_least("num_workers", num_workers, 0)
        self.root = Path(root).expanduser()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None

    def _loader(self, dataset: Optional[Dataset], shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not built this split")
        # the shuffled (training) loader is resumable mid-epoch: Lightning checkpoints its position
        return (ResumableDataLoader if shuffle else CheckedDataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSeededSampler(dataset, self.seed) if shuffle else None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
            collate_fn=collate_or_fail,  # a sample that failed in a worker is raised here, one line (FailedSample)
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
