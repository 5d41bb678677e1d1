"""ImageNet-1k (ILSVRC 2012) files: an ImageFolder tree whose images are checked before training.

On-disk layout under ``root``::

    train/<wnid>/*.JPEG, val/<wnid>/*.JPEG     class-per-folder trees (the same wnids on both sides)
    ILSVRC2012_img_{train,val}.tar, ILSVRC2012_devkit_t12.tar.gz   the official archives (:func:`unpack_archives`)

The archives are checked against their published MD5 and unpacked with :mod:`datamodules.safe_files` (no member
outside the folder; the 1,000 class archives inside the training archive too); validation images are sorted into
class folders by the devkit's ground truth, as torchvision's ``ImageNet`` does.

A bad image fails before training, naming it: :func:`check_image_headers` reads the header of every image
(zero-byte files and files PIL cannot identify, e.g. an HTML error page saved as ``.JPEG``). An image whose header
is fine but whose body is damaged (truncated) is found only when it is decoded: :class:`CheckedImageFolder` hands
a :class:`~datamodules.sampling.FailedSample` to the loader, which raises the :class:`DataFileError` naming the file
in the main process, also from a worker process. Failing is deliberate (no skip-and-count as for Speech Commands):
a dropped image would change the epoch's batches and the class balance silently, and a broken file in an ImageNet
copy usually means the copy is incomplete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from PIL import Image
from torchvision import datasets

from bso_lightning.atomic import atomic_directory
from datamodules.base import DataFileError
from datamodules.safe_files import extract_archives, fetch_archive
from datamodules.sampling import FailedSample

DEVKIT, TRAIN_ARCHIVE, VAL_ARCHIVE = ARCHIVES = (
    "ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
#: Published MD5 of each archive (torchvision's ``datasets.imagenet.ARCHIVE_META``).
ARCHIVE_MD5 = {DEVKIT: "fa75699e90414af021442c21a62c3abf", TRAIN_ARCHIVE: "1d675b47d978889d74fa0da5fadfb00e",
               VAL_ARCHIVE: "29b22e2961454d5413ddabcf34fc5622"}
_ARCHIVE_REMEDY = "Delete it and download it again from https://image-net.org/download-images"
REMEDY = "delete or replace the file (re-extract it from the archive), then run again"
#: Threads of the header check (file opens overlap on network file systems).
CHECK_THREADS = 16


def load_image(path: str) -> Image.Image:
    """``ImageFolder``'s loader (RGB) that raises :class:`DataFileError` naming the file on any decoding error."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataFileError(path, f"not a decodable image ({type(exc).__name__}: {exc})", REMEDY) from exc


def header_problem(path: str) -> Optional[str]:
    """Why ``path`` is not an image (zero bytes, or a header PIL cannot identify), else ``None`` (reads the header
    only, not the pixels)."""
    try:
        if Path(path).stat().st_size == 0:
            return "empty (0 bytes)"
        with Image.open(path) as image:
            image.size  # noqa: B018 - identified from the header
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_image_headers(paths: list[str], threads: int = CHECK_THREADS) -> None:
    """Raise :class:`DataFileError` naming every file of ``paths`` that is empty or not an image."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        problems = [(p, why) for p, why in zip(paths, pool.map(header_problem, paths, chunksize=256)) if why]
    if problems:
        listed = "; ".join(f"{p} ({why})" for p, why in problems[:10])
        more = f"; ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataFileError(problems[0][0], f"{len(problems)} of {len(paths)} image file(s) are empty or not images: "
                                            f"{listed}{more}", REMEDY + " (check_images=False skips this check)")


def check_class_sets(train_root: Path, val_root: Path) -> None:
    """Raise :class:`DataFileError` naming the class folders that only one of the two trees has (the labels of
    ``ImageFolder`` are positions in the sorted folder names: two different sets would mislabel every class)."""
    train = {p.name for p in train_root.iterdir() if p.is_dir()}
    val = {p.name for p in val_root.iterdir() if p.is_dir()}
    if train == val:
        return

    def some(names: set[str]) -> str:
        shown = sorted(names)[:10]
        return (", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")) if names else "none"

    raise DataFileError(val_root, f"its class folders differ from those of {train_root}: missing in "
                                  f"{val_root.name}/: {some(train - val)}; missing in {train_root.name}/: "
                                  f"{some(val - train)}", "Both need the same class folders (wnids)")


class CheckedImageFolder(datasets.ImageFolder):
    """``ImageFolder`` over :func:`load_image`; an image that cannot be decoded becomes a ``FailedSample`` (the
    loader raises its :class:`DataFileError` in the main process, naming the file)."""

    def __init__(self, root: str | Path, transform: Any = None) -> None:
        super().__init__(str(root), transform=transform, loader=load_image)

    def __getitem__(self, index: int) -> Any:
        try:
            return super().__getitem__(index)
        except DataFileError as exc:
            return FailedSample(exc)


def _archive(root: Path, name: str) -> Path:
    return fetch_archive(None, root / name, md5=ARCHIVE_MD5[name], how="https://image-net.org/download-images (login)")


def val_wnids(root: Path) -> list[str]:
    """The class (wnid) of every validation image, in file-name order, from the devkit archive (its ``meta.mat``
    and ``ILSVRC2012_validation_ground_truth.txt``, read as torchvision does)."""
    import scipy.io

    devkit = _archive(root, DEVKIT)
    with tempfile.TemporaryDirectory(dir=root, prefix=".devkit-") as tmp:
        extract_archives([devkit], Path(tmp) / "devkit")
        data = Path(tmp) / "devkit" / "ILSVRC2012_devkit_t12" / "data"
        try:
            synsets = scipy.io.loadmat(data / "meta.mat", squeeze_me=True)["synsets"]
            id_to_wnid = {int(s[0]): str(s[1]) for s in synsets if int(s[4]) == 0}  # leaves: num_children == 0
            ids = [int(line) for line in (data / "ILSVRC2012_validation_ground_truth.txt").read_text().split()]
            return [id_to_wnid[i] for i in ids]
        except Exception as exc:  # noqa: BLE001 - reported with the archive's name
            raise DataFileError(devkit, f"not the ILSVRC 2012 devkit ({type(exc).__name__}: {exc})",
                                _ARCHIVE_REMEDY) from exc


def unpack_archives(root: Path, split: str) -> None:
    """Unpack the official archive of ``split`` (``"train"``, ``"val"``) into ``root/<split>``, once and atomically:
    MD5 checked, no member outside the folder; training: one folder per inner class archive; validation: images
    sorted into class folders by :func:`val_wnids`."""
    if split == "train":
        archive = _archive(root, TRAIN_ARCHIVE)
        with atomic_directory(root / "train") as tmp:
            extract_archives([archive], tmp / ".class_archives")
            for inner in sorted((tmp / ".class_archives").iterdir()):
                extract_archives([inner], tmp / inner.name.removesuffix(".tar"))
                inner.unlink()  # (as torchvision does: the disk holds one copy of each class)
            (tmp / ".class_archives").rmdir()
        return
    wnids = val_wnids(root)
    archive = _archive(root, VAL_ARCHIVE)
    with atomic_directory(root / "val") as tmp:
        extract_archives([archive], tmp / ".images")
        images = sorted((tmp / ".images").iterdir())
        if len(images) != len(wnids):
            raise DataFileError(archive, f"holds {len(images)} images, the devkit's ground truth lists {len(wnids)}",
                                _ARCHIVE_REMEDY)
        for wnid, image in zip(wnids, images):
            (tmp / wnid).mkdir(exist_ok=True)
            os.replace(image, tmp / wnid / image.name)
        shutil.rmtree(tmp / ".images")
