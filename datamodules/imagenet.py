"""ImageNet-1k (ILSVRC 2012) from an ImageFolder tree or the three official archives.

Reader (image checks, the class-set check, the decoding loader): :mod:`datamodules.datasets.imagenet`. Policy:
**fail before training** — every image header is read in ``setup``, train/val class folders must match, and an
image whose body cannot be decoded stops the run with a ``DataFileError`` naming it (from a worker process too).
"""

from __future__ import annotations

from pathlib import Path

from torchvision import transforms as T

from datamodules.base import BaseDataModule, check_at_least, dataset_not_found
from datamodules.datasets import imagenet as reader
from datamodules.datasets.imagenet import CHECK_THREADS, check_image_headers  # noqa: F401 (benchmarks import them here)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_HOW = (
    "ImageNet cannot be downloaded automatically (its licence requires a login). Register at "
    "https://image-net.org/download-images, download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar "
    "and ILSVRC2012_devkit_t12.tar.gz into this folder (they are checked and unpacked into train/ and "
    "val/ on first use), or unpack them yourself into train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"
)


class ImageNetDataModule(BaseDataModule):
    """ImageNet as two class-per-folder trees, ``root/<train_dir>`` and ``root/<val_dir>``.

    If those folders are missing but the three official archives are in ``root``,
    ``prepare_data`` checks their MD5 and unpacks them with no member allowed outside the folder (into
    ``root/train`` and ``root/val``, validation images sorted into class folders with the devkit, as
    torchvision's ``ImageNet`` does; :func:`datamodules.datasets.imagenet.unpack_archives`).

    Training: random-resized-crop ``image_size`` + horizontal flip. Validation and test (both the
    official validation set): resize ``resize_size`` + center-crop ``image_size``. Both normalized
    with the ImageNet mean/std. ``num_classes`` must match the number of class folders (use a
    smaller value for a subset such as ImageNet-100); ``image_size``/``resize_size`` can be made
    small for quick tests.

    ``check_images`` (default on): before training, read the header of every image and fail with
    :class:`DataFileError` listing the empty or unidentifiable ones (one file open per image, in
    ``CHECK_THREADS`` threads; measured 845 images/s on a loaded 2-core machine with a warm page cache,
    ``benchmarks/reliability_costs.py``: about 26 min for the 1.33 M images — ``False`` skips it on a copy
    already checked). Train and val must have the same class folders (:class:`DataFileError` naming those missing
    on each side). A damaged image body raises :class:`DataFileError` naming the file when decoded, in the main
    process also with ``num_workers`` > 0.
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
        check_at_least("num_classes", num_classes, 2)
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
        return all((self.root / name).is_file() for name in reader.ARCHIVES)

    def prepare_data(self) -> None:
        for split, folder in (("train", self.train_dir), ("val", self.val_dir)):
            if not (self.root / folder).is_dir() and self._has_archives() and folder == split:
                reader.unpack_archives(self.root, split)  # once
        self._check_folders()

    def _check_folders(self) -> None:
        expected = (
            f"{self.train_dir}/<wnid>/*.JPEG and {self.val_dir}/<wnid>/*.JPEG "
            f"({self.num_classes} class folders each), or the archives {', '.join(reader.ARCHIVES)}"
        )
        for folder in (self.train_dir, self.val_dir):
            if not (self.root / folder).is_dir():
                raise dataset_not_found("ImageNet", self.root, expected, _HOW, problem=f"no folder {self.root / folder}")
        reader.check_class_sets(self.root / self.train_dir, self.root / self.val_dir)
        for folder in (self.train_dir, self.val_dir):
            path = self.root / folder
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
        train_set = reader.CheckedImageFolder(self.root / self.train_dir, self.train_transform())
        val_set = reader.CheckedImageFolder(self.root / self.val_dir, self.eval_transform())
        if self.check_images:
            check_image_headers([path for path, _ in train_set.samples + val_set.samples])
        self.train_set, self.val_set = train_set, val_set
        self.test_set = self.val_set
