"""Shared base of the event-frame DataModules (CIFAR10-DVS, DVS128 Gesture, SHD): cache, split, loaders.

A subclass lists its samples (``_list_samples``: file, label and official subset where there is one),
integrates one sample into ``[T, C, H, W]`` frames (``_integrate``), names its settings (``_settings``)
and chooses the split (``_split``). This base builds the frame cache once (progress bar; rebuilt when the
files or settings change), saves the split with the training set's per-channel mean/std beside it, and
serves ``x: [B, T, C, H, W]`` batches with the training transform (crop/flip where the subclass adds them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
from torchvision import transforms as T

from datamodules.base import BaseDataModule, check_at_least, file_stamp
from datamodules.datasets.frames import (FrameDataset, build_frame_cache, cache_matches, channel_mean_std,
                                         integrate_event_file, write_json)

log = logging.getLogger(__name__)


class EventFrameDataModule(BaseDataModule):
    """Base: ``x: [B, T, C, H, W]`` event frames cached under ``root/bso_cache/<cache_name>``.

    Subclasses set ``name``, ``in_channels``, ``num_classes`` and implement ``_list_samples``,
    ``_integrate``, ``_settings``, ``_cache_name``, ``_frame_shape`` (and ``_split``, ``_augmentations``).
    """

    name: str = "events"

    def __init__(self, root: str | Path, batch_size: int, num_workers: int, pin_memory: bool, seed: int,
                 download: bool, time_steps: int, normalize: bool) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, seed)
        check_at_least("time_steps", time_steps, 1)
        self.download = download
        self.time_steps = time_steps
        self.normalize = normalize
        self.mean: Optional[list[float]] = None
        self.std: Optional[list[float]] = None

    # ------------------------------------------------------------------ subclass hooks
    def _list_samples(self) -> tuple[list[str], list[int], Optional[list[str]]]:
        """(files relative to ``events_root``, labels, official subset "train"/"test" or None)."""
        raise NotImplementedError

    def _integrate(self, file: str) -> np.ndarray:
        raise NotImplementedError

    def _settings(self) -> dict[str, Any]:
        """Everything the frames depend on (stored in the cache; a change rebuilds it)."""
        raise NotImplementedError

    def _files_fingerprint(self, files: list[str]) -> str:
        """SHA-1 of the names, sizes and modification times of the files the frames are read from (stored with the
        cache: a file replaced or edited under the same name rebuilds it). Default: each file under
        ``events_root``."""
        stamps = "\n".join(f"{f} {file_stamp(self.events_root / f)}" for f in files)  # type: ignore[attr-defined]
        return hashlib.sha1(stamps.encode()).hexdigest()

    def _cache_name(self) -> str:
        """Folder name of the cache under ``root/bso_cache`` (distinct for distinct settings)."""
        raise NotImplementedError

    def _frame_shape(self) -> tuple[int, int, int]:
        raise NotImplementedError

    def _split(self, files: list[str], labels: np.ndarray, subsets: Optional[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Default: the official split."""
        subsets_arr = np.asarray(subsets)
        return np.flatnonzero(subsets_arr == "train"), np.flatnonzero(subsets_arr == "test")

    def _split_name(self) -> str:
        return "official"

    def _augmentations(self) -> list:
        return []

    # -------------------------------------------------------------------------- paths
    @property
    def cache_dir(self) -> Path:
        return self.root / "bso_cache" / self._cache_name()

    @property
    def split_file(self) -> Path:
        return self.cache_dir / f"split_{self._split_name()}.json"

    # ---------------------------------------------------------------------- preparing
    def prepare_data(self) -> None:
        files, labels, subsets = self._list_samples()
        settings = {**self._settings(), "files_fingerprint": self._files_fingerprint(files)}
        if not cache_matches(self.cache_dir, settings, files):
            if self.cache_dir.exists():
                log.warning("%s: the frame cache %s does not match the event files; rebuilding it", self.name, self.cache_dir)
                shutil.rmtree(self.cache_dir)
            build_frame_cache(self.cache_dir, files, labels, self._integrate, (self.time_steps, *self._frame_shape()),
                              settings, desc=f"{self.name}: integrating events into {self.time_steps} frames")
        if not self.split_file.is_file():
            train, test = self._split(files, np.asarray(labels), subsets)
            mean, std = channel_mean_std(self.cache_dir / "frames.npy", train)
            write_json(self.split_file, {"split": self._split_name(), "seed": self.seed, "train": train.tolist(),
                                         "test": test.tolist(), "mean": mean, "std": std})

    # ------------------------------------------------------------------------ loading
    def _normalization(self) -> list:
        return [T.Normalize(self.mean, self.std)] if self.normalize else []

    def train_transform(self) -> T.Compose:
        return T.Compose(self._augmentations() + self._normalization())

    def eval_transform(self) -> T.Compose:
        return T.Compose(self._normalization())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()  # cheap when the cache exists; builds it when prepare_data was not called
        split = json.loads(self.split_file.read_text())
        self.mean, self.std = split["mean"], split["std"]
        labels = np.load(self.cache_dir / "labels.npy")
        frames_file = self.cache_dir / "frames.npy"
        self.train_set = FrameDataset(frames_file, labels, np.array(split["train"], dtype=np.int64), self.train_transform())
        self.test_set = FrameDataset(frames_file, labels, np.array(split["test"], dtype=np.int64), self.eval_transform())
        self.val_set = self.test_set


class CameraEventFrameDataModule(EventFrameDataModule):
    """Event-camera recordings (CIFAR10-DVS, DVS128 Gesture): spikingjelly's integration into ``time_steps``
    frames, random crop (``crop_padding``) and horizontal flip (``horizontal_flip``) for training.

    Subclasses set ``reader``: their dataset's reader module (``SENSOR_SIZE``, ``REMEDY``).
    """

    reader: Any
    crop_padding: int
    horizontal_flip: bool

    def _set_camera_options(self, image_size: int, split_by: str, crop_padding: int, horizontal_flip: bool) -> None:
        """Check and keep the frame size, the integration mode and the training augmentation."""
        if not 1 <= image_size <= self.reader.SENSOR_SIZE:
            raise ValueError(f"image_size must lie in [1, {self.reader.SENSOR_SIZE}], got {image_size}")
        if split_by not in ("number", "time"):
            raise ValueError(f"split_by must be 'number' or 'time', got {split_by!r}")
        check_at_least("crop_padding", crop_padding, 0)
        self.image_size, self.split_by = image_size, split_by
        self.crop_padding, self.horizontal_flip = crop_padding, horizontal_flip

    @property
    def events_root(self) -> Path:
        return self.root / "events_np"

    def _settings(self) -> dict:
        return {"time_steps": self.time_steps, "split_by": self.split_by, "size": self.image_size}

    def _cache_name(self) -> str:
        return f"frames_T{self.time_steps}_{self.split_by}_{self.image_size}px"

    def _frame_shape(self) -> tuple[int, int, int]:
        return (2, self.image_size, self.image_size)

    def _augmentations(self) -> list:
        steps: list = []
        if self.crop_padding > 0:
            steps.append(T.RandomCrop(self.image_size, padding=self.crop_padding))
        if self.horizontal_flip:
            steps.append(T.RandomHorizontalFlip())
        return steps

    def _integrate(self, file: str) -> np.ndarray:
        return integrate_event_file(self.events_root / file, self.time_steps, self.split_by, self.image_size,
                                    self.reader.SENSOR_SIZE, self.reader.REMEDY)
