"""Spiking Heidelberg Digits files: ``shd_{train,test}.h5`` (spike times and units per sample; read with h5py).

On-disk layout under ``root`` (spikingjelly 2.0's; a folder holding just the two ``.h5`` files works too)::

    download/shd_{train,test}.h5.zip     from https://zenkelab.org/datasets/   (download=True: MD5 checked)
    extract/shd_{train,test}.h5          the HDF5 files                      (download=True: extracted safely)
    events_h5/shd_{train,test}.h5        spikingjelly's links to them (a folder spikingjelly prepared works too)

Each file holds ``spikes/times`` (per sample, spike times in seconds), ``spikes/units`` (per sample, the
channel 0-699 of each spike) and ``labels`` (0-19: digits 0-9 in English, then in German).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from datamodules.base import DataFileError, dataset_not_found
from datamodules.safe_files import extract_archives, fetch_archive

CHANNELS = 700  # SpikingHeidelbergDigits.get_H_W()[1]
NUM_CLASSES = 20
SUBSETS = ("train", "test")
FOLDERS = ("events_h5", "extract", ".")  # searched in this order
REMEDY = "Delete it and download it again (download=True, or https://zenkelab.org/datasets/)."
#: ``(file under root/download, URL, MD5)`` of the two archives (spikingjelly's ``resource_url_md5()``).
ARCHIVES = (("shd_train.h5.zip", "https://zenkelab.org/datasets/shd_train.h5.zip", "f3252aeb598ac776c1b526422d90eecb"),
            ("shd_test.h5.zip", "https://zenkelab.org/datasets/shd_test.h5.zip", "1503a5064faa34311c398fb0a1ed0a6f"))
HOW = ("pass download=True (downloads shd_train.h5.zip and shd_test.h5.zip, ~0.5 GB, from https://zenkelab.org/datasets/ "
       "into root/download, checks their MD5 and extracts them into root/extract), or put shd_train.h5 and "
       "shd_test.h5 into root")
EXPECTED = "shd_train.h5 and shd_test.h5 in root, root/extract or root/events_h5"


def find_or_download(root: Path, download: bool) -> dict[str, Path]:
    """:func:`find_files`; if absent and ``download``, fetch the archives into ``root/download`` (the ones already
    there are checked against their MD5) and extract them safely into ``root/extract``. Raises
    ``DatasetNotFoundError`` when the files are still missing."""
    paths = find_files(root)
    if paths is None and download:
        archives = [fetch_archive(url, root / "download" / name, md5=md5) for name, url, md5 in ARCHIVES]
        extract_archives(archives, root / "extract")
        paths = find_files(root)
    if paths is None:
        raise dataset_not_found("SHD", root, EXPECTED, HOW)
    return paths


def find_files(root: Path) -> Optional[dict[str, Path]]:
    """``{"train": .../shd_train.h5, "test": .../shd_test.h5}`` from the first folder holding both, else None."""
    for folder in FOLDERS:
        paths = {s: root / folder / f"shd_{s}.h5" for s in SUBSETS}
        if all(p.is_file() for p in paths.values()):
            return paths
    return None


def read_labels(path: Path) -> np.ndarray:
    """The ``labels`` of one SHD file (without reading the spikes); DataFileError naming the file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return np.asarray(f["labels"][()], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001
        raise DataFileError(path, f"not a readable SHD file with labels ({type(exc).__name__}: {exc})", REMEDY) from exc


def list_samples(paths: dict[str, Path]) -> tuple[list[str], list[int], list[str]]:
    """``(files, labels, subsets)`` of every sample of :func:`find_files`' files: sample ``i`` of
    ``shd_<subset>.h5`` is the file ``"<subset>/<i>"``."""
    files, labels, subsets = [], [], []
    for subset, path in paths.items():
        y = read_labels(path)
        files += [f"{subset}/{i}" for i in range(len(y))]
        labels += y.tolist()
        subsets += [subset] * len(y)
    return files, labels, subsets


def read_samples(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """(spike times per sample, units per sample, labels) of one SHD file; DataFileError naming the file."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            times = [np.asarray(t, dtype=np.float64) for t in f["spikes"]["times"][()]]
            units = [np.asarray(u, dtype=np.int64) for u in f["spikes"]["units"][()]]
            labels = np.asarray(f["labels"][()], dtype=np.int64)
    except Exception as exc:  # noqa: BLE001 - any failure is reported with the file's path
        raise DataFileError(path, f"not a readable SHD file with spikes/times, spikes/units and labels "
                                  f"({type(exc).__name__}: {exc})", REMEDY) from exc
    if not len(times) == len(units) == len(labels):
        raise DataFileError(path, f"spikes/times, spikes/units and labels differ in length "
                                  f"({len(times)}, {len(units)}, {len(labels)})", REMEDY)
    for i, (t, u) in enumerate(zip(times, units)):
        if len(t) != len(u):
            raise DataFileError(path, f"sample {i}: {len(t)} spike times but {len(u)} units", REMEDY)
        if len(u) and (u.min() < 0 or u.max() >= CHANNELS):
            raise DataFileError(path, f"sample {i}: units outside 0..{CHANNELS - 1}", REMEDY)
    if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataFileError(path, f"labels outside 0..{NUM_CLASSES - 1}", REMEDY)
    return times, units, labels


def spike_frames(times: np.ndarray, units: np.ndarray, time_steps: int, time_bins: int, channel_groups: int,
                 duration: float) -> np.ndarray:
    """Spikes -> ``float16 [time_steps, 1, time_bins, channel_groups]`` spike counts.

    The first ``duration`` seconds are cut into ``time_steps`` equal windows (one per step), each window
    into ``time_bins`` rows; the 700 channels are summed in ``channel_groups`` groups of adjacent channels
    (channel c -> column c · channel_groups // 700). Spikes at or after ``duration`` are dropped.
    """
    keep = (times >= 0) & (times < duration)
    rows = np.minimum((times[keep] / duration * time_steps * time_bins).astype(np.int64), time_steps * time_bins - 1)
    cols = units[keep] * channel_groups // CHANNELS
    counts = np.bincount(rows * channel_groups + cols, minlength=time_steps * time_bins * channel_groups)
    return counts.reshape(time_steps, 1, time_bins, channel_groups).astype(np.float16)
