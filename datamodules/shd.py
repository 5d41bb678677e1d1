"""Spiking Heidelberg Digits (SHD) as sequences of spike-count images (reader: :mod:`datamodules.datasets.shd`)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from datamodules.base import check_at_least, file_stamp
from datamodules.datasets import shd as reader
from datamodules.event_frames import EventFrameDataModule

_READ_LOCK = threading.Lock()  # module level: a DataModule must stay picklable


class SHDDataModule(EventFrameDataModule):
    """SHD (20 spoken digits, 700 cochlea channels): ``x: [B, T, 1, time_bins, channel_groups]``, official split.

    Step ``t`` sees the spikes of the ``t``-th of ``time_steps`` equal windows of the first ``duration``
    seconds, as an image: ``time_bins`` rows (time within the window) by ``channel_groups`` columns (adjacent
    channels summed); spikes after ``duration`` are dropped (SHD clips last up to ~1.4 s, most under 1 s).
    So a VGG-style BSNN reads a spectrogram-like spike raster, one window per step. Train/test are the
    official files (the test set also validates); frames are cached once under ``root/bso_cache`` and
    normalized with the training mean/std when ``normalize`` is on. ``download=True`` fetches the two archives
    (MD5 checked) and extracts them into ``root/extract`` with no member allowed outside it.
    """

    name = "SHD"
    num_classes = reader.NUM_CLASSES
    in_channels = 1

    def __init__(
        self,
        root: str | Path = "data/shd",
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        download: bool = False,
        time_steps: int = 10,
        time_bins: int = 32,
        channel_groups: int = 32,
        duration: float = 1.0,
        normalize: bool = True,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, seed, download, time_steps, normalize)
        check_at_least("time_bins", time_bins, 1)
        if not 1 <= channel_groups <= reader.CHANNELS:
            raise ValueError(f"channel_groups must lie in [1, {reader.CHANNELS}], got {channel_groups}")
        if not duration > 0:
            raise ValueError(f"duration must be > 0 seconds, got {duration}")
        self.time_bins = time_bins
        self.channel_groups = channel_groups
        self.duration = float(duration)
        self._paths: dict[str, Path] = {}
        self._spikes: dict[str, tuple] = {}
        self._fingerprint: dict[str, str] = {}

    def _settings(self) -> dict:
        return {"time_steps": self.time_steps, "time_bins": self.time_bins, "channel_groups": self.channel_groups,
                "duration": self.duration, "h5_files": self._fingerprint}

    def _files_fingerprint(self, files: list[str]) -> str:
        """The samples are rows of two HDF5 files, whose sizes and modification times are in :meth:`_settings`."""
        return "h5_files"

    def _cache_name(self) -> str:
        return f"frames_T{self.time_steps}_{self.time_bins}x{self.channel_groups}_{self.duration:g}s"

    def _frame_shape(self) -> tuple[int, int, int]:
        return (1, self.time_bins, self.channel_groups)

    def _integrate(self, file: str) -> np.ndarray:
        subset, index = file.split("/")
        with _READ_LOCK:  # the spikes are read once, by the first of the cache builder's threads
            if subset not in self._spikes:
                self._spikes[subset] = reader.read_samples(self._paths[subset])
        times, units, _ = self._spikes[subset]
        i = int(index)
        return reader.spike_frames(times[i], units[i], self.time_steps, self.time_bins, self.channel_groups, self.duration)

    def prepare_data(self) -> None:
        super().prepare_data()
        self._spikes.clear()  # only the cache builder needs the spikes

    def _list_samples(self):
        self._paths = reader.find_or_download(self.root, self.download)
        self._fingerprint = {f"{s}:{p.name}": file_stamp(p) for s, p in self._paths.items()}  # cache key: the files
        return reader.list_samples(self._paths)
