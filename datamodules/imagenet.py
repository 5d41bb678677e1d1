"""ImageNet-1k (ILSVRC 2012) from an ImageFolder tree or torchvision's archive layout.

A bad image fails before training, naming it: ``setup`` reads the header of every image (zero-byte files and
files PIL cannot identify, e.g. an HTML error page saved as ``.JPEG``) and raises :class:`DataFileError` listing
them. An image whose header is fine but whose body is damaged (truncated) is found only when it is decoded; that
also raises :class:`DataFileError` naming the file (:func:`load_image`). Failing is deliberate (no skip-and-count
as for Speech Commands): a dropped image would change the epoch's batches and the class balance silently, and a
broken file in an ImageNet copy usually means the copy is incomplete.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from PIL import Image
from torchvision import datasets
from torchvision import transforms as T

from datamodules.base import BaseDataModule, DataFileError, dataset_not_found

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
_HOW = (
    "ImageNet cannot be downloaded automatically (its licence requires a login). Register at "
    "https://image-net.org/download-images, download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar "
    "and ILSVRC2012_devkit_t12.tar.gz into this folder (torchvision then unpacks them into train/ and "
    "val/ on first use), or unpack them yourself into train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"
)


_REMEDY = "delete or replace the file (re-extract it from the archive), then run again"
#: Threads of the header check (file opens overlap on network file systems).
CHECK_THREADS = 16


def load_image(path: str) -> Image.Image:
    """``ImageFolder``'s loader (RGB) that raises :class:`DataFileError` naming the file on any decoding error."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataFileError(path, f"not a decodable image ({type(exc).__name__}: {exc})", _REMEDY) from exc


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
                                            f"{listed}{more}", _REMEDY + " (check_images=False skips this check)")


class ImageNetDataModule(BaseDataModule):
    """ImageNet as two class-per-folder trees, ``root/<train_dir>`` and ``root/<val_dir>``.

    If those folders are missing but the three official archives are in ``root``,
    ``prepare_data`` lets torchvision's :class:`~torchvision.datasets.ImageNet` unpack them (into
    ``root/train`` and ``root/val``, validation images sorted into class folders with the devkit).

    Training: random-resized-crop ``image_size`` + horizontal flip. Validation and test (both the
    official validation set): resize ``resize_size`` + center-crop ``image_size``. Both normalized
    with the ImageNet mean/std. ``num_classes`` must match the number of class folders (use a
    smaller value for a subset such as ImageNet-100); ``image_size``/``resize_size`` can be made
    small for quick tests.

    ``check_images`` (default on): before training, read the header of every image and fail with
    :class:`DataFileError` listing the empty or unidentifiable ones (one file open per image, in
    ``CHECK_THREADS`` threads; measured 845 images/s on a loaded 2-core machine with a warm page cache,
    ``benchmarks/reliability_costs.py``: about 26 min for the 1.33 M images — ``False`` skips it on a copy
    already checked). A damaged image body raises :class:`DataFileError` naming the file when decoded.
    """

    in_channels = 3

    def __init__(
        self,
        root: str | Path = "data/imagenet",
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        num_classes: int = 1000,
        image_size: int = 224,
        resize_size: int = 256,
        train_dir: str = "train",
        val_dir: str = "val",
        check_images: bool = True,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, seed)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if image_size < 1 or resize_size < image_size:
            raise ValueError(
                f"need 1 <= image_size <= resize_size, got image_size={image_size}, resize_size={resize_size}"
            )
        self.num_classes = num_classes
        self.image_size = image_size
        self.resize_size = resize_size
        self.train_dir = train_dir
        self.val_dir = val_dir
        self.check_images = check_images

    def _has_archives(self) -> bool:
        return all((self.root / name).is_file() for name in _ARCHIVES)

    def prepare_data(self) -> None:
        for split, folder in (("train", self.train_dir), ("val", self.val_dir)):
            if not (self.root / folder).is_dir() and self._has_archives() and folder == split:
                datasets.ImageNet(str(self.root), split=split)  # unpacks the archive once
        self._check_folders()

    def _check_folders(self) -> None:
        expected = (
            f"{self.train_dir}/<wnid>/*.JPEG and {self.val_dir}/<wnid>/*.JPEG "
            f"({self.num_classes} class folders each), or the archives {', '.join(_ARCHIVES)}"
        )
        for folder in (self.train_dir, self.val_dir):
            path = self.root / folder
            if not path.is_dir():
                raise dataset_not_found("ImageNet", self.root, expected, _HOW, problem=f"no folder {path}")
            n = sum(1 for p in path.iterdir() if p.is_dir())
            if n != self.num_classes:
                raise dataset_not_found(
                    "ImageNet", self.root, expected, _HOW,
                    problem=f"{path} has {n} class folders but num_classes={self.num_classes}",
                )

    def train_transform(self) -> T.Compose:
        return T.Compose([
            T.RandomResizedCrop(self.image_size),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def eval_transform(self) -> T.Compose:
        return T.Compose([
            T.Resize(self.resize_size),
            T.CenterCrop(self.image_size),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        if self._has_archives():
            self.prepare_data()  # no-op once unpacked; Lightning has usually called it already
        self._check_folders()
        train_set = datasets.ImageFolder(str(self.root / self.train_dir), transform=self.train_transform(),
                                         loader=load_image)
        val_set = datasets.ImageFolder(str(self.root / self.val_dir), transform=self.eval_transform(), loader=load_image)
        if train_set.classes != val_set.classes:
            raise RuntimeError(
                f"class folders differ between {self.root / self.train_dir} and {self.root / self.val_dir}"
            )
        if self.check_images:
            check_image_headers([path for path, _ in train_set.samples + val_set.samples])
        self.train_set, self.val_set = train_set, val_set
        self.test_set = self.val_set
