"""CIFAR10-DVS files: listing spikingjelly's ``events_np`` and converting the raw ``extract/*.aedat`` to it.

On-disk layout under ``root`` (spikingjelly 2.0's)::

    download/<class>.zip                 the 10 archives from figshare      (spikingjelly, download=True)
    extract/<class>/*.aedat              the raw AER-DAT recordings          (spikingjelly, or put there by hand)
    events_np/<class>/*.npz              events as arrays t, x, y, p         (spikingjelly's raw form)
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from bso_lightning.atomic import atomic_directory
from datamodules.base import DataFileError

CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # spikingjelly.datasets.cifar10_dvs.CIFAR10DVS_CLASS_NAMES; label = position
SENSOR_SIZE = 128  # CIFAR10DVS.get_H_W()
REMEDY = "Delete it (and re-create it from extract/ or with download=True)."


def natural_key(path: Path) -> tuple:
    """Sort key: the trailing sample number, then the name (``..._2`` before ``..._10``)."""
    match = re.search(r"(\d+)$", path.stem)
    return (int(match.group(1)) if match else -1, path.name)


def list_event_files(events_root: Path) -> list[tuple[str, int]]:
    """``(path relative to events_root, label)`` for every ``.npz``, by class then sample number."""
    files = []
    for label, cls in enumerate(CLASS_NAMES):
        folder = events_root / cls
        if folder.is_dir():
            for path in sorted(folder.glob("*.npz"), key=natural_key):
                files.append((f"{cls}/{path.name}", label))
    return files


def convert_raw_events(extract_root: Path, events_root: Path) -> None:
    """Convert ``extract/<class>/*.aedat`` into spikingjelly's ``events_np/<class>/*.npz`` (atomically)."""
    from spikingjelly.datasets.cifar10_dvs import _load_origin_data

    jobs = [(path, Path(cls) / f"{path.stem}.npz") for cls in CLASS_NAMES
            for path in sorted((extract_root / cls).glob("*.aedat"), key=natural_key)]
    with atomic_directory(events_root) as tmp:
        for cls in CLASS_NAMES:
            (tmp / cls).mkdir()

        def convert(job: tuple[Path, Path]) -> None:
            src, rel = job
            try:
                events = _load_origin_data(src)
            except Exception as exc:  # noqa: BLE001
                raise DataFileError(src, f"not a readable AER-DAT recording ({type(exc).__name__}: {exc})",
                                    "Delete it, or re-extract its archive from root/download.") from exc
            np.savez_compressed(tmp / rel, t=events["t"], x=events["x"], y=events["y"], p=events["p"])

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for _ in tqdm(pool.map(convert, jobs), total=len(jobs), desc="CIFAR10-DVS: converting .aedat to .npz", unit="file"):
                pass
