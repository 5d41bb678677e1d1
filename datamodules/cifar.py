"""CIFAR-10 and CIFAR-100 (torchvision's python-pickle format; reader: :mod:`datamodules.datasets.cifar`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets
from torchvision import transforms as T

from datamodules.base import BaseDataModule, dataset_not_found
from datamodules.datasets import cifar as reader
from datamodules.datasets.cifar import CIFARImages
from datamodules.safe_files import extract_archives, fetch_archive
from datamodules.transforms import Cutout


class _CIFARDataModule(BaseDataModule):
    """Shared code; the subclasses below only name the files, statistics and default ``root``.

    (A subclass's ``__init__`` takes ``root`` and passes ``**kwargs`` on to this one: jsonargparse, and so
    LightningCLI, resolves ``**kwargs`` given to ``super().__init__`` to the arguments below, defaults
    included, so ``--data.batch_size`` etc. stay in the CLI and its help.)
    """

    in_channels = 3
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tv_class: type
    display_name: str

    def __init__(
        self,
        root: str | Path,
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        download: bool = False,
        val_size: int = 0,
        auto_augment: bool = False,
        cutout_length: int = 16,
        crop_padding: int = 4,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, seed)
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0 (0 = use the test set for validation), got {val_size}")
        if cutout_length < 0:
            raise ValueError(f"cutout_length must be >= 0 (0 = no cutout), got {cutout_length}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        self.download = download
        self.val_size = val_size
        self.auto_augment = auto_augment
        self.cutout_length = cutout_length
        self.crop_padding = crop_padding

    # ----------------------------------------------------------------------------------- data
    @property
    def data_dir(self) -> Path:
        return self.root / self.folder

    def prepare_data(self) -> None:
        if self.download and self._missing_files():
            # torchvision's URL and MD5; our download and extraction (no member outside the data folder)
            archive = fetch_archive(self.tv_class.url, self.root / self.tv_class.filename, md5=self.tv_class.tgz_md5,
                                    name=self.display_name)
            extract_archives([archive], self.data_dir, inner=self.folder)
        self._check_files()

    def _missing_files(self) -> list[str]:
        wanted = (*self.train_files, *self.test_files, self.meta_file)
        return [f for f in wanted if not (self.data_dir / f).is_file()]

    def _check_files(self) -> None:
        wanted = (*self.train_files, *self.test_files, self.meta_file)
        missing = self._missing_files()
        if missing:
            raise dataset_not_found(
                self.display_name,
                self.data_dir,
                f"the python-pickle files {', '.join(wanted)}",
                f"pass download=True (torchvision fetches {self.tv_class.url}), or extract "
                f"{self.tv_class.filename} into {self.root}",
                problem=None if not self.data_dir.exists() else f"missing {', '.join(missing)}",
            )

    # ------------------------------------------------------------------------------ transforms
    def train_transform(self) -> T.Compose:
        steps: list = [T.RandomCrop(32, padding=self.crop_padding), T.RandomHorizontalFlip()]
        if self.auto_augment:
            steps.append(T.AutoAugment(T.AutoAugmentPolicy.CIFAR10))
        steps.append(T.ToTensor())
        if self.cutout_length > 0:
            steps.append(Cutout(self.cutout_length))
        steps.append(T.Normalize(self.mean, self.std))
        return T.Compose(steps)

    def eval_transform(self) -> T.Compose:
        return T.Compose([T.ToTensor(), T.Normalize(self.mean, self.std)])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()  # downloads only if asked and missing; Lightning has usually called it already
        train_x, train_y = reader.read_batches(self.data_dir, self.train_files, self.label_key, self.num_classes)
        test_x, test_y = reader.read_batches(self.data_dir, self.test_files, self.label_key, self.num_classes)
        self.test_set = CIFARImages(test_x, test_y, self.eval_transform())
        if self.val_size == 0:
            self.train_set = CIFARImages(train_x, train_y, self.train_transform())
            self.val_set = self.test_set
            return
        if self.val_size >= len(train_y):
            raise ValueError(f"val_size ({self.val_size}) must be smaller than the {len(train_y)} training images")
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(self.seed)).numpy()
        val_idx, train_idx = np.sort(order[: self.val_size]), np.sort(order[self.val_size :])
        self.train_set = CIFARImages(train_x[train_idx], train_y[train_idx], self.train_transform())
        self.val_set = CIFARImages(train_x[val_idx], train_y[val_idx], self.eval_transform())


class CIFAR10DataModule(_CIFARDataModule):
    """CIFAR-10 from ``root/cifar-10-batches-py`` (torchvision's layout).

    Training: random crop 32 with ``crop_padding``, horizontal flip, optional AutoAugment (CIFAR-10
    policy), cutout of side ``cutout_length`` (0 disables), normalization by the mean/std the BSO
    authors use. Validation is the official test set unless ``val_size`` > 0, in which case a
    seeded hold-out of ``val_size`` training images (with the evaluation transform) is used; the
    test split is always the official test set.
    """

    num_classes = 10
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    label_key = "labels"
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)
    tv_class = datasets.CIFAR10
    display_name = "CIFAR-10"

    def __init__(self, root: str | Path = "data/cifar10", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (fine labels) from ``root/cifar-100-python``; same pipeline as :class:`CIFAR10DataModule`."""

    num_classes = 100
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = "fine_labels"
    mean = (0.5071, 0.4867, 0.4408)
    std = (0.2675, 0.2565, 0.2761)
    tv_class = datasets.CIFAR100
    display_name = "CIFAR-100"

    def __init__(self, root: str | Path = "data/cifar100", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
