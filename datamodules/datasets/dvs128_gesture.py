"""DVS128 Gesture files: the IBM recordings split into one ``.npz`` per gesture (spikingjelly's reader).

On-disk layout under ``root`` (spikingjelly 2.0's)::

    download/DvsGesture.tar.gz                 the archive from IBM (manual download: the site needs a login)
    extract/DvsGesture/userNN_<light>.aedat    AEDAT 3.1 recordings, one per user and lighting
    extract/DvsGesture/userNN_<light>_labels.csv   class (1-11), startTime_usec, endTime_usec per gesture
    extract/DvsGesture/trials_to_{train,test}.txt  the official split (users 1-23 train, 24-29 test)
    events_np/{train,test}/<label 0-10>/userNN_<light>_<k>.npz   events t, x, y, p per gesture
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from bso_lightning.atomic import atomic_directory
from datamodules.base import DataFileError, dataset_not_found
from datamodules.datasets.cifar10_dvs import natural_key
from datamodules.safe_files import extract_archives, fetch_archive

CLASS_NAMES = (
    "hand_clapping", "right_hand_wave", "left_hand_wave", "right_arm_clockwise", "right_arm_counter_clockwise",
    "left_arm_clockwise", "left_arm_counter_clockwise", "arm_roll", "air_drums", "air_guitar", "other_gestures",
)  # label = csv class - 1 (gesture_mapping.csv)
SENSOR_SIZE = 128  # DVS128Gesture.get_H_W()
SUBSETS = ("train", "test")
TRIAL_LISTS = {"train": "trials_to_train.txt", "test": "trials_to_test.txt"}
REMEDY = "Delete it (and re-create events_np from extract/DvsGesture)."
ARCHIVE = "DvsGesture.tar.gz"
ARCHIVE_MD5 = "8a5c71fb11e24e5ca5b11866ca6c00a1"  # spikingjelly's DVS128Gesture.resource_url_md5()
HOW = ("download DvsGesture.tar.gz by hand from https://research.ibm.com/interactive/dvsgesture/ (IBM's box "
       "folder needs a login) into root/download and pass download=True (it is checked against its published MD5 "
       "and extracted safely), or extract it into root/extract")
EXPECTED = ("events_np/{train,test}/<label>/*.npz (spikingjelly's split gestures) or "
            "extract/DvsGesture/ with the .aedat recordings, their _labels.csv and trials_to_{train,test}.txt")


def find_or_make_events(root: Path, download: bool) -> Path:
    """``root/events_np`` (spikingjelly's layout), made from ``extract/DvsGesture`` if missing, which is first
    extracted from ``download/DvsGesture.tar.gz`` when ``download`` (MD5 checked, no member outside ``extract``).
    Raises ``DatasetNotFoundError`` naming what is missing."""
    events_root = root / "events_np"
    if events_root.is_dir():
        return events_root
    aedat_dir = root / "extract" / "DvsGesture"
    archive = root / "download" / ARCHIVE
    if not aedat_dir.is_dir() and download and archive.is_file():
        extract_archives([fetch_archive(None, archive, md5=ARCHIVE_MD5, how=HOW)], root / "extract")
    if not aedat_dir.is_dir():
        problem = f"download=True needs {archive} (IBM's site needs a login)" if download else None
        raise dataset_not_found("DVS128 Gesture", root, EXPECTED, HOW, problem=problem)
    missing = [n for n in TRIAL_LISTS.values() if not (aedat_dir / n).is_file()]
    if missing:
        raise dataset_not_found("DVS128 Gesture", root, EXPECTED, HOW, problem=f"{aedat_dir} has no {', '.join(missing)}")
    convert_recordings(aedat_dir, events_root)
    return events_root


def trials(aedat_dir: Path, subset: str) -> list[str]:
    """The recording names of the official ``subset`` (``trials_to_<subset>.txt``)."""
    return [line.strip() for line in (aedat_dir / TRIAL_LISTS[subset]).read_text().splitlines() if line.strip()]


def list_event_files(events_root: Path) -> list[tuple[str, int, str]]:
    """``(path relative to events_root, label, subset)`` of every gesture ``.npz``, by subset, label, name."""
    files = []
    for subset in SUBSETS:
        for label in range(len(CLASS_NAMES)):
            folder = events_root / subset / str(label)
            if folder.is_dir():
                for path in sorted(folder.glob("*.npz"), key=lambda p: (p.stem.rsplit("_", 1)[0], natural_key(p))):
                    files.append((f"{subset}/{label}/{path.name}", label, subset))
    return files


def convert_recordings(aedat_dir: Path, events_root: Path) -> None:
    """Split every listed recording into gestures with spikingjelly (``events_np``, atomically)."""
    from spikingjelly.datasets.dvs128_gesture import _split_aedat_files_to_np

    jobs = []
    for subset in SUBSETS:
        for name in trials(aedat_dir, subset):
            stem = os.path.splitext(name)[0]
            jobs.append((stem, aedat_dir / name, aedat_dir / f"{stem}_labels.csv", subset))
    missing = [str(p) for _, a, c, _ in jobs for p in (a, c) if not p.is_file()]
    if missing:
        raise DataFileError(missing[0], f"listed in {aedat_dir}/trials_to_*.txt but missing "
                                        f"({len(missing)} file(s) in all)", "Re-extract DvsGesture.tar.gz.")
    with atomic_directory(events_root) as tmp:
        for subset in SUBSETS:
            for label in range(len(CLASS_NAMES)):
                (tmp / subset / str(label)).mkdir(parents=True)

        def convert(job) -> None:
            stem, aedat, csv, subset = job
            try:
                _split_aedat_files_to_np(stem, aedat, csv, tmp / subset)
            except Exception as exc:  # noqa: BLE001 - reported with the recording's path
                raise DataFileError(aedat, f"not a readable AEDAT 3.1 recording with its labels csv "
                                           f"({type(exc).__name__}: {exc})", "Re-extract DvsGesture.tar.gz.") from exc

        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for _ in tqdm(pool.map(convert, jobs), total=len(jobs), desc="DVS128 Gesture: splitting recordings", unit="file"):
                pass
