"""Event frames: integrate events into T frames (spikingjelly), cache them once, read them memory-mapped.

Cache folder (one per dataset and settings; written atomically by :func:`build_frame_cache`)::

    frames.npy          float16 [N, T, C, H, W], every sample in listing order
    labels.npy          int64 [N]
    files.json          {"version", "settings", "files"}: the cache key (settings and the event files)
    split_<name>.json   train/test indices and the training set's per-channel mean/std
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from bso_lightning.atomic import atomic_directory, atomic_file
from datamodules.base import DataFileError

CACHE_VERSION = 1
_CHUNK = 256  # samples integrated per batch of threads (bounded memory)


def load_events(path: Path, keys: str = "txyp", remedy: str = "") -> dict[str, np.ndarray]:
    """The event arrays of one spikingjelly ``.npz``; :class:`DataFileError` naming the file otherwise."""
    try:
        with np.load(path) as npz:
            events = {key: npz[key] for key in keys}
    except Exception as exc:  # noqa: BLE001 - any failure is reported with the file's path
        raise DataFileError(path, f"not a readable events .npz ({type(exc).__name__}: {exc})", remedy) from exc
    n = len(events["t"])
    if n == 0 or any(len(v) != n for v in events.values()):
        raise DataFileError(path, f"expected equally long, non-empty {'/'.join(keys)} arrays, "
                                  f"got {[len(v) for v in events.values()]}", remedy)
    return events


def integrate_event_file(path: Path, time_steps: int, split_by: str, size: int, sensor: int, remedy: str = "") -> np.ndarray:
    """Events of one ``.npz`` -> ``float16 [time_steps, 2, size, size]`` event-count frames.

    spikingjelly integrates the events into ``time_steps`` frames at the ``sensor`` x ``sensor``
    resolution (``split_by="number"``: equal event counts per frame; ``"time"``: equal durations);
    the frames are then resized to ``size`` with antialiased bilinear interpolation.
    """
    from spikingjelly.datasets import integrate_events_by_fixed_frames_number

    events = load_events(path, remedy=remedy)
    for axis in ("x", "y"):
        if events[axis].min() < 0 or events[axis].max() >= sensor:
            raise DataFileError(path, f"event coordinates outside the {sensor}x{sensor} sensor", remedy)
    try:
        frames = integrate_events_by_fixed_frames_number(events, split_by, time_steps, sensor, sensor)
    except Exception as exc:  # noqa: BLE001
        raise DataFileError(path, f"events could not be integrated into {time_steps} frames "
                                  f"({type(exc).__name__}: {exc})", remedy) from exc
    frames_t = torch.from_numpy(frames).float()
    if size != sensor:
        frames_t = F.interpolate(frames_t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return frames_t.numpy().astype(np.float16)


def cache_matches(cache_dir: Path, settings: dict[str, Any], files: Sequence[str]) -> bool:
    """Whether ``cache_dir`` holds frames built with ``settings`` from exactly ``files``."""
    meta_file = cache_dir / "files.json"
    if not meta_file.is_file() or not (cache_dir / "frames.npy").is_file():
        return False
    meta = json.loads(meta_file.read_text())
    return meta.get("version") == CACHE_VERSION and meta.get("settings") == settings and meta.get("files") == list(files)


def build_frame_cache(cache_dir: Path, files: Sequence[str], labels: Sequence[int], integrate: Callable[[str], np.ndarray],
                      shape: Sequence[int], settings: dict[str, Any], desc: str, workers: int = 0) -> None:
    """Integrate every sample with ``integrate(file)`` (-> ``shape``) into ``cache_dir``, with a progress bar."""
    from numpy.lib.format import open_memmap

    with atomic_directory(cache_dir, complete_marker="files.json") as tmp:
        frames = open_memmap(tmp / "frames.npy", mode="w+", dtype=np.float16, shape=(len(files), *shape))
        workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(files), desc=desc, unit="sample") as bar:
            for start in range(0, len(files), _CHUNK):
                chunk = files[start:start + _CHUNK]
                try:
                    samples = list(pool.map(integrate, chunk))
                except DataFileError:
                    # again one by one in this thread: the error names the first bad file in order, whatever the
                    # threads finished first (and a failure seen only under threads is not reported as a bad file)
                    samples = [integrate(file) for file in chunk]
                for i, sample in enumerate(samples, start):
                    frames[i] = sample
                    bar.update()
        frames.flush()
        del frames
        np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64))
        (tmp / "files.json").write_text(json.dumps({"version": CACHE_VERSION, "settings": settings, "files": list(files)}))


def channel_mean_std(frames_file: Path, indices: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the frames ``indices`` (over samples, steps and pixels); std 0 -> 1."""
    frames = np.load(frames_file, mmap_mode="r")
    channels = frames.shape[2]
    total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(indices), _CHUNK):
        chunk = np.asarray(frames[np.sort(indices[start:start + _CHUNK])], dtype=np.float64)
        total += chunk.sum(axis=(0, 1, 3, 4))
        total_sq += (chunk ** 2).sum(axis=(0, 1, 3, 4))
        count += chunk.shape[0] * chunk.shape[1] * chunk.shape[3] * chunk.shape[4]
    mean = total / max(count, 1)
    std = np.sqrt(np.maximum(total_sq / max(count, 1) - mean ** 2, 0.0))
    return mean.tolist(), np.where(std > 0, std, 1.0).tolist()


def write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data))


class FrameDataset(Dataset):
    """Samples ``indices`` of a cached ``frames.npy`` (memory-mapped lazily, once per worker)."""

    def __init__(self, frames_file: Path, labels: np.ndarray, indices: np.ndarray,
                 transform: Optional[Callable] = None) -> None:
        self.frames_file = str(frames_file)
        self.labels = labels
        self.indices = indices
        self.transform = transform
        self._frames: Optional[np.ndarray] = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_frames"] = None  # never pickle the memory map's data into a worker
        return state

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._frames is None:
            self._frames = np.load(self.frames_file, mmap_mode="r")
        j = int(self.indices[i])
        x = torch.from_numpy(np.asarray(self._frames[j], dtype=np.float32))
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[j])
