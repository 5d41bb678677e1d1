"""CIFAR10-DVS: events read with spikingjelly, integrated into T frames once and cached on disk.

On-disk layout under ``root`` (spikingjelly 2.0's, plus this module's cache):

    download/<class>.zip                 the 10 archives from figshare      (spikingjelly, download=True)
    extract/<class>/*.aedat              the raw AER-DAT recordings          (spikingjelly, or put there by hand)
    events_np/<class>/*.npz              events as arrays t, x, y, p         (spikingjelly's raw form)
    bso_cache/frames_T{T}_{split_by}_{S}px/
        frames.npy                       float16 [N, T, 2, S, S], every sample in file order
        labels.npy                       int64 [N]
        files.json                       the event files the frames came from (cache key)
        split_seed{seed}_train{n}.json   train/test indices and the training set's mean/std
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import transforms as T
from tqdm.auto import tqdm

from datamodules.base import BaseDataModule, DataFileError, dataset_not_found

log = logging.getLogger(__name__)

CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # spikingjelly.datasets.cifar10_dvs.CIFAR10DVS_CLASS_NAMES; label = position
SENSOR_SIZE = 128  # CIFAR10DVS.get_H_W()
CACHE_VERSION = 1
_HOW = (
    "pass download=True (spikingjelly downloads the 10 class archives, ~7 GB, from "
    "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 into root/download, extracts and "
    "converts them), or put the extracted <class>/*.aedat folders in root/extract"
)
_EXPECTED = "events_np/<class>/*.npz (spikingjelly's converted events) or extract/<class>/*.aedat for the 10 classes " + ", ".join(CLASS_NAMES)


def _natural_key(path: Path) -> tuple:
    match = re.search(r"(\d+)$", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def list_event_files(events_root: Path) -> list[tuple[str, int]]:
    """``(path relative to events_root, label)`` for every ``.npz``, by class then sample number."""
    files = []
    for label, cls in enumerate(CLASS_NAMES):
        folder = events_root / cls
        if folder.is_dir():
            for path in sorted(folder.glob("*.npz"), key=_natural_key):
                files.append((f"{cls}/{path.name}", label))
    return files


def integrate_file(path: Path, time_steps: int, split_by: str, size: int) -> np.ndarray:
    """Events of one ``.npz`` -> ``float16 [time_steps, 2, size, size]`` event-count frames.

    spikingjelly integrates the events into ``time_steps`` frames at the sensor's 128x128
    (``split_by="number"``: equal event counts per frame; ``"time"``: equal durations); the frames
    are then resized to ``size`` with antialiased bilinear interpolation.
    """
    from spikingjelly.datasets import integrate_events_by_fixed_frames_number

    remedy = "Delete it (and re-create it from extract/ or with download=True)."
    try:
        with np.load(path) as npz:
            events = {key: npz[key] for key in ("t", "x", "y", "p")}
    except Exception as exc:  # noqa: BLE001 - any failure is reported with the file's path
        raise DataFileError(path, f"not a readable events .npz ({type(exc).__name__}: {exc})", remedy) from exc
    n = len(events["t"])
    if n == 0 or any(len(v) != n for v in events.values()):
        raise DataFileError(path, f"expected equally long, non-empty t/x/y/p arrays, got {[len(v) for v in events.values()]}", remedy)
    if events["x"].max() >= SENSOR_SIZE or events["y"].max() >= SENSOR_SIZE or events["x"].min() < 0 or events["y"].min() < 0:
        raise DataFileError(path, f"event coordinates outside the {SENSOR_SIZE}x{SENSOR_SIZE} sensor", remedy)
    try:
        frames = integrate_events_by_fixed_frames_number(events, split_by, time_steps, SENSOR_SIZE, SENSOR_SIZE)
    except Exception as exc:  # noqa: BLE001
        raise DataFileError(path, f"events could not be integrated into {time_steps} frames ({type(exc).__name__}: {exc})", remedy) from exc
    frames_t = torch.from_numpy(frames).float()
    if size != SENSOR_SIZE:
        frames_t = F.interpolate(frames_t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return frames_t.numpy().astype(np.float16)


def build_frame_cache(
    events_root: Path,
    files: list[tuple[str, int]],
    cache_dir: Path,
    time_steps: int,
    split_by: str,
    size: int,
    workers: int = 0,
) -> None:
    """Integrate every event file into frames and write ``cache_dir`` (atomically: via a temporary folder)."""
    from numpy.lib.format import open_memmap

    tmp = cache_dir.with_name(f"{cache_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        frames = open_memmap(tmp / "frames.npy", mode="w+", dtype=np.float16, shape=(len(files), time_steps, 2, size, size))
        workers = workers or min(8, os.cpu_count() or 1)
        paths = [events_root / rel for rel, _ in files]
        bar = tqdm(total=len(paths), desc=f"CIFAR10-DVS: integrating events into {time_steps} frames", unit="sample")
        with ThreadPoolExecutor(max_workers=workers) as pool, bar:
            for start in range(0, len(paths), 256):  # bounded memory: one chunk of results at a time
                chunk = pool.map(lambda p: integrate_file(p, time_steps, split_by, size), paths[start : start + 256])
                for i, sample in enumerate(chunk, start):
                    frames[i] = sample
                    bar.update()
        frames.flush()
        del frames
        np.save(tmp / "labels.npy", np.array([label for _, label in files], dtype=np.int64))
        meta = {"version": CACHE_VERSION, "time_steps": time_steps, "split_by": split_by, "size": size, "files": [rel for rel, _ in files]}
        (tmp / "files.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, cache_dir)
        except OSError:  # another process finished first: keep its cache
            if not (cache_dir / "files.json").is_file():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert_raw_events(extract_root: Path, events_root: Path) -> None:
    """Convert ``extract/<class>/*.aedat`` into spikingjelly's ``events_np/<class>/*.npz`` (atomically)."""
    from spikingjelly.datasets.cifar10_dvs import _load_origin_data

    jobs = []
    for cls in CLASS_NAMES:
        for path in sorted((extract_root / cls).glob("*.aedat"), key=_natural_key):
            jobs.append((path, Path(cls) / f"{path.stem}.npz"))
    tmp = events_root.with_name(f"{events_root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for cls in CLASS_NAMES:
        (tmp / cls).mkdir(parents=True)

    def convert(job: tuple[Path, Path]) -> None:
        src, rel = job
        try:
            events = _load_origin_data(src)
        except Exception as exc:  # noqa: BLE001
            raise DataFileError(src, f"not a readable AER-DAT recording ({type(exc).__name__}: {exc})",
                                "Delete it, or re-extract its archive from root/download.") from exc
        np.savez_compressed(tmp / rel, t=events["t"], x=events["x"], y=events["y"], p=events["p"])

    try:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for _ in tqdm(pool.map(convert, jobs), total=len(jobs), desc="CIFAR10-DVS: converting .aedat to .npz", unit="file"):
                pass
        os.rename(tmp, events_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class FrameDataset(Dataset):
    """Samples ``indices`` of a cached ``frames.npy`` (memory-mapped lazily, once per worker)."""

    def __init__(self, frames_file: Path, labels: np.ndarray, indices: np.ndarray, transform: Optional[Callable] = None) -> None:
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


class CIFAR10DVSDataModule(BaseDataModule):
    """CIFAR10-DVS as ``x: [B, T, 2, S, S]`` event frames (one per time step), 10 classes.

    Events (spikingjelly's reader and integrator) are split into ``time_steps`` frames
    (``split_by``), resized from 128x128 to ``image_size``, and cached once under
    ``root/bso_cache`` (a progress bar shows while frames are built; later runs only read the
    cache). The split is class-balanced and seeded: per class, ``train_per_class`` samples
    (paper: 900 of 1000) train and the rest (100) form the test set, which is also the
    validation set; the split and the training set's per-polarity mean/std are cached too, so
    every run and machine gets the same split. Training adds a random crop (``crop_padding``
    zero-event pixels of padding, then back to ``image_size``) and a horizontal flip; frames are
    normalized with the training mean/std when ``normalize`` is on.

    An unreadable or malformed event file stops ``prepare_data``/``setup`` with a
    :class:`~datamodules.base.DataFileError` naming the file (nothing is cached then).
    """

    num_classes = 10
    in_channels = 2

    def __init__(
        self,
        root: str | Path = "data/cifar10_dvs",
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        download: bool = False,
        time_steps: int = 10,
        image_size: int = 48,
        split_by: Literal["number", "time"] = "number",
        train_per_class: int = 900,
        crop_padding: int = 4,
        horizontal_flip: bool = True,
        normalize: bool = True,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, seed)
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        if not 1 <= image_size <= SENSOR_SIZE:
            raise ValueError(f"image_size must lie in [1, {SENSOR_SIZE}], got {image_size}")
        if split_by not in ("number", "time"):
            raise ValueError(f"split_by must be 'number' or 'time', got {split_by!r}")
        if train_per_class < 1:
            raise ValueError(f"train_per_class must be >= 1, got {train_per_class}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.download = download
        self.time_steps = time_steps
        self.image_size = image_size
        self.split_by = split_by
        self.train_per_class = train_per_class
        self.crop_padding = crop_padding
        self.horizontal_flip = horizontal_flip
        self.normalize = normalize
        self.mean: Optional[list[float]] = None
        self.std: Optional[list[float]] = None

    # -------------------------------------------------------------------------------- paths
    @property
    def events_root(self) -> Path:
        return self.root / "events_np"

    @property
    def cache_dir(self) -> Path:
        return self.root / "bso_cache" / f"frames_T{self.time_steps}_{self.split_by}_{self.image_size}px"

    @property
    def split_file(self) -> Path:
        return self.cache_dir / f"split_seed{self.seed}_train{self.train_per_class}.json"

    # ---------------------------------------------------------------------------- preparing
    def _not_found(self, problem: str | None = None):
        return dataset_not_found("CIFAR10-DVS", self.root, _EXPECTED, _HOW, problem=problem)

    def _ensure_events(self) -> list[tuple[str, int]]:
        marker = self.root / "events_np.building"
        if marker.exists():
            raise self._not_found(
                f"an earlier spikingjelly conversion did not finish ({marker} exists); delete "
                f"{self.events_root} and {marker} and run again"
            )
        if not self.events_root.is_dir():
            extract = self.root / "extract"
            if extract.is_dir() and any((extract / cls).is_dir() for cls in CLASS_NAMES):
                log.info("CIFAR10-DVS: converting %s to %s", extract, self.events_root)
                convert_raw_events(extract, self.events_root)
            elif self.download:
                from spikingjelly.datasets.cifar10_dvs import CIFAR10DVS

                self.root.mkdir(parents=True, exist_ok=True)
                CIFAR10DVS(str(self.root), data_type="event")  # download -> extract -> events_np
            else:
                raise self._not_found()
        files = list_event_files(self.events_root)
        counts = np.bincount([label for _, label in files], minlength=self.num_classes)
        short = [f"{cls}: {counts[i]}" for i, cls in enumerate(CLASS_NAMES) if counts[i] <= self.train_per_class]
        if short:
            raise self._not_found(
                f"{self.events_root} needs more than train_per_class={self.train_per_class} .npz files "
                f"in every class folder; too few in {', '.join(short)}. If {self.events_root} was made from an "
                f"incomplete extract/ or download/, delete it (and the incomplete folder) and run again"
            )
        return files

    def _cache_matches(self, files: list[tuple[str, int]]) -> bool:
        meta_file = self.cache_dir / "files.json"
        if not meta_file.is_file() or not (self.cache_dir / "frames.npy").is_file():
            return False
        meta = json.loads(meta_file.read_text())
        return meta.get("version") == CACHE_VERSION and meta.get("files") == [rel for rel, _ in files]

    def _ensure_frames(self, files: list[tuple[str, int]]) -> None:
        if self._cache_matches(files):
            return
        if self.cache_dir.exists():
            log.warning("CIFAR10-DVS: the frame cache %s does not match %s; rebuilding it", self.cache_dir, self.events_root)
            shutil.rmtree(self.cache_dir)
        self.cache_dir.parent.mkdir(parents=True, exist_ok=True)
        build_frame_cache(self.events_root, files, self.cache_dir, self.time_steps, self.split_by, self.image_size)

    def _ensure_split(self) -> dict:
        if self.split_file.is_file():
            return json.loads(self.split_file.read_text())
        labels = np.load(self.cache_dir / "labels.npy")
        rng = np.random.Generator(np.random.PCG64(self.seed))
        train, test = [], []
        for label in range(self.num_classes):
            idx = np.flatnonzero(labels == label)
            idx = idx[rng.permutation(len(idx))]
            train.append(idx[: self.train_per_class])
            test.append(idx[self.train_per_class :])
        train_idx = np.sort(np.concatenate(train))
        test_idx = np.sort(np.concatenate(test))
        frames = np.load(self.cache_dir / "frames.npy", mmap_mode="r")
        total = np.zeros(2)
        total_sq = np.zeros(2)
        for start in range(0, len(train_idx), 256):
            chunk = np.asarray(frames[train_idx[start : start + 256]], dtype=np.float64)
            total += chunk.sum(axis=(0, 1, 3, 4))
            total_sq += (chunk**2).sum(axis=(0, 1, 3, 4))
        count = len(train_idx) * self.time_steps * self.image_size**2
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        split = {
            "seed": self.seed,
            "train_per_class": self.train_per_class,
            "train": train_idx.tolist(),
            "test": test_idx.tolist(),
            "mean": mean.tolist(),
            "std": np.where(std > 0, std, 1.0).tolist(),
        }
        tmp = self.split_file.with_name(f"{self.split_file.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(split))
        os.replace(tmp, self.split_file)
        return split

    def prepare_data(self) -> None:
        files = self._ensure_events()
        self._ensure_frames(files)
        self._ensure_split()

    # ------------------------------------------------------------------------------ loading
    def train_transform(self) -> T.Compose:
        steps: list = []
        if self.crop_padding > 0:
            steps.append(T.RandomCrop(self.image_size, padding=self.crop_padding))
        if self.horizontal_flip:
            steps.append(T.RandomHorizontalFlip())
        steps += self._normalization()
        return T.Compose(steps)

    def eval_transform(self) -> T.Compose:
        return T.Compose(self._normalization())

    def _normalization(self) -> list:
        return [T.Normalize(self.mean, self.std)] if self.normalize else []

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()  # cheap when the cache exists; builds it when prepare_data was not called
        split = self._ensure_split()
        self.mean, self.std = split["mean"], split["std"]
        labels = np.load(self.cache_dir / "labels.npy")
        frames_file = self.cache_dir / "frames.npy"
        self.train_set = FrameDataset(frames_file, labels, np.array(split["train"]), self.train_transform())
        self.test_set = FrameDataset(frames_file, labels, np.array(split["test"]), self.eval_transform())
        self.val_set = self.test_set
