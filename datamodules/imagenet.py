"""ImageNet-1k (ILSVRC 2012) from an ImageFolder tree or torchvision's archive layout."""

from __future__ import annotations

from pathlib import Path

from torchvision import datasets
from torchvision import transforms as T

from datamodules.base import BaseDataModule, dataset_not_found

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
_HOW = (
    "ImageNet cannot be downloaded automatically (its licence requires a login). Register at "
    "https://image-net.org/download-images, download ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar "
    "and ILSVRC2012_devkit_t12.tar.gz into this folder (torchvision then unpacks them into train/ and "
    "val/ on first use), or unpack them yourself into train/<wnid>/*.JPEG and val/<wnid>/*.JPEG"
)


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
        self.train_set = datasets.ImageFolder(str(self.root / self.train_dir), transform=self.train_transform())
        self.val_set = datasets.ImageFolder(str(self.root / self.val_dir), transform=self.eval_transform())
        if self.train_set.classes != self.val_set.classes:
            raise RuntimeError(
                f"class folders differ between {self.root / self.train_dir} and {self.root / self.val_dir}"
            )
        self.test_set = self.val_set
