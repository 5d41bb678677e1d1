"""CIFAR10-DVS files: listing spikingjelly's ``events_np`` and converting the raw ``extract/*.aedat`` to it.

On-disk layout under ``root`` (spikingjelly 2.0's)::

    download/<class>.zip                 the 10 archives from figshare      (download=True: MD5 checked)
    extract/<class>/*.aedat              the raw AER-DAT recordings          (download=True: extracted safely)
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
from datamodules.base import DataFileError, DatasetNotFoundError, dataset_not_found
from datamodules.safe_files import extract_archives, fetch_archive

CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # spikingjelly.datasets.cifar10_dvs.CIFAR10DVS_CLASS_NAMES; label = position
SENSOR_SIZE = 128  # CIFAR10DVS.get_H_W()
REMEDY = "Delete it (and re-create it from extract/ or with download=True)."
_FIGSHARE = "https://ndownloader.figshare.com/files/"
#: ``(file under root/download, URL, MD5)`` of the 10 class archives (spikingjelly's ``CIFAR10DVS.resource_url_md5()``).
ARCHIVES = tuple((f"{cls}.zip", _FIGSHARE + number, md5) for cls, number, md5 in (
    ("airplane", "7712788", "0afd5c4bf9ae06af762a77b180354fdd"), ("automobile", "7712791", "8438dfeba3bc970c94962d995b1b9bdd"),
    ("bird", "7712794", "a9c207c91c55b9dc2002dc21c684d785"), ("cat", "7712812", "52c63c677c2b15fa5146a8daf4d56687"),
    ("deer", "7712815", "b6bf21f6c04d21ba4e23fc3e36c8a4a3"), ("dog", "7712818", "f379ebdf6703d16e0a690782e62639c3"),
    ("frog", "7712842", "cad6ed91214b1c7388a5f6ee56d08803"), ("horse", "7712851", "e7cbbf77bec584ffbf913f00e682782a"),
    ("ship", "7712836", "41c7bd7d6b251be82557c6cce9a7d5c9"), ("truck", "7712839", "89f3922fd147d9aeff89e76a2b0b70a7")))
HOW = ("pass download=True (downloads the 10 class archives, ~7 GB, from "
       "https://figshare.com/articles/dataset/CIFAR10-DVS_New/4724671 into root/download, checks their MD5, extracts "
       "them safely and converts them), or put the extracted <class>/*.aedat folders in root/extract")
EXPECTED = ("events_np/<class>/*.npz (spikingjelly's converted events) or extract/<class>/*.aedat for the 10 "
            "classes " + ", ".join(CLASS_NAMES))


def not_found(root: Path, problem: str | None = None) -> DatasetNotFoundError:
    """The error for missing or incomplete CIFAR10-DVS data under ``root``."""
    return dataset_not_found("CIFAR10-DVS", root, EXPECTED, HOW, problem=problem)


def find_or_make_events(root: Path, download: bool) -> Path:
    """``root/events_np``, converted from ``root/extract`` if missing, which is first made from the class archives
    in ``root/download`` (fetched if missing, MD5 checked, no member outside ``extract``) when ``download``."""
    events_root, extract = root / "events_np", root / "extract"
    marker = root / "events_np.building"
    if marker.exists():
        raise not_found(root, f"an earlier spikingjelly conversion did not finish ({marker} exists); delete "
                              f"{events_root} and {marker} and run again")
    if events_root.is_dir():
        return events_root
    has_classes = extract.is_dir() and any((extract / cls).is_dir() for cls in CLASS_NAMES)
    if not has_classes and download:
        archives = [fetch_archive(url, root / "download" / name, md5=md5) for name, url, md5 in ARCHIVES]
        extract_archives(archives, extract)
        has_classes = True
    if not has_classes:
        raise not_found(root)
    convert_raw_events(extract, events_root)
    return events_root


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
