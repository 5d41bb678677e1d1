"""CIFAR-10 and CIFAR-100 (torchvision's python-pickle format; reader: :mod:`datamodules.datasets.cifar`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import transforms as T

from datamodules.base import BaseDataModule, check_at_least, dataset_not_found
from datamodules.datasets import cifar as reader
from datamodules.datasets.cifar import CIFARImages
from datamodules.safe_files import extract_archives, fetch_archive
from datamodules.transforms import Cutout


class _CIFARDataModule(BaseDataModule):
    """Shared code; the subclasses below only name their :class:`~datamodules.datasets.cifar.CIFARVariant` (files,
    statistics) and default ``root``.

    (A subclass's ``__init__`` takes ``root`` and passes ``**kwargs`` on to this one: jsonargparse, and so
    LightningCLI, resolves ``**kwargs`` given to ``super().__init__`` to the arguments below, defaults
    included, so ``--data.batch_size`` etc. stay in the CLI and its help.)
    """

    in_channels = 3
    variant: reader.CIFARVariant

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
        check_at_least("val_size", val_size, 0, "(0 = use the test set for validation)")
        check_at_least("cutout_length", cutout_length, 0, "(0 = no cutout)")
        check_at_least("crop_padding", crop_padding, 0)
        self.num_classes, self.mean, self.std = self.variant.num_classes, self.variant.mean, self.variant.std
        self.download = download
        self.val_size = val_size
        self.auto_augment = auto_augment
        self.cutout_length = cutout_length
        self.crop_padding = crop_padding

    # ----------------------------------------------------------------------------------- data
    @property
    def data_dir(self) -> Path:
        return self.root / self.variant.folder

    def prepare_data(self) -> None:
        if self.download and self._missing_files():
            # torchvision's URL and MD5; our download and extraction (no member outside the data folder)
            tv = self.variant.tv_class
            archive = fetch_archive(tv.url, self.root / tv.filename, md5=tv.tgz_md5, name=self.variant.name)
            extract_archives([archive], self.data_dir, inner=self.variant.folder)
        self._check_files()

    def _wanted_files(self) -> tuple[str, ...]:
        return (*self.variant.train_files, *self.variant.test_files, self.variant.meta_file)

    def _missing_files(self) -> list[str]:
        return [f for f in self._wanted_files() if not (self.data_dir / f).is_file()]

    def _check_files(self) -> None:
        missing = self._missing_files()
        if missing:
            raise dataset_not_found(
                self.variant.name,
                self.data_dir,
                f"the python-pickle files {', '.join(self._wanted_files())}",
                f"pass download=True (torchvision fetches {self.variant.tv_class.url}), or extract "
                f"{self.variant.tv_class.filename} into {self.root}",
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
        v = self.variant
        train_x, train_y = reader.read_batches(self.data_dir, v.train_files, v.label_key, v.num_classes)
        test_x, test_y = reader.read_batches(self.data_dir, v.test_files, v.label_key, v.num_classes)
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

    variant = reader.CIFAR10

    def __init__(self, root: str | Path = "data/cifar10", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)


class CIFAR100DataModule(_CIFARDataModule):
    """CIFAR-100 (fine labels) from ``root/cifar-100-python``; same pipeline as :class:`CIFAR10DataModule`."""

    variant = reader.CIFAR100

    def __init__(self, root: str | Path = "data/cifar100", **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
