"""CIFAR-10 / CIFAR-100 files: torchvision's python-pickle batches, read without running code from them.

On-disk layout under ``root`` (torchvision's)::

    cifar-10-python.tar.gz, cifar-100-python.tar.gz      the archives (download=True: MD5 checked)
    cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    cifar-100-python/{train, test, meta}

Each batch is a pickle of ``{"data": uint8 [N, 3072], "labels" | "fine_labels": [N]}``, read by the arrays-only
unpickler (:func:`datamodules.safe_files.load_arrays_pickle`) and checked (:class:`DataFileError` naming the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision import transforms as T

from datamodules.base import DataFileError
from datamodules.safe_files import load_arrays_pickle


@dataclass(frozen=True)
class CIFARVariant:
    """CIFAR-10 or CIFAR-100 in torchvision's layout: where its batches are and how they name the labels, torchvision's
    class for the archive (``url``, ``filename``, ``tgz_md5``), and the mean/std the BSO authors normalize with."""

    name: str  # "CIFAR-10", in messages
    num_classes: int
    folder: str  # under root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    tv_class: type


CIFAR10 = CIFARVariant("CIFAR-10", 10, "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)),
                       ("test_batch",), "batches.meta", "labels", (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                       datasets.CIFAR10)
CIFAR100 = CIFARVariant("CIFAR-100", 100, "cifar-100-python", ("train",), ("test",), "meta", "fine_labels",
                        (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), datasets.CIFAR100)  # fine labels


class CIFARImages(Dataset):
    """``uint8`` images ``[N, 32, 32, 3]`` and labels, turned into PIL images for ``transform``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Optional[Callable] = None) -> None:
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[index])
        x = self.transform(img) if self.transform is not None else T.functional.pil_to_tensor(img)
        return x, int(self.labels[index])


def read_batches(data_dir: Path, files: tuple[str, ...], label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``uint8`` images ``[N, 32, 32, 3]`` and ``int64`` labels of the batch ``files`` in ``data_dir``."""
    images, labels = [], []
    for name in files:
        path = data_dir / name
        remedy = f"Delete {data_dir} and run again with download=True."
        try:
            with open(path, "rb") as f:
                entry = load_arrays_pickle(f)  # numpy arrays and plain data only: no code from a data file
            data = np.asarray(entry["data"])
            targets = np.asarray(entry[label_key])
        except Exception as exc:  # noqa: BLE001 - reported with the file's path
            reason = " ".join(str(exc).split())
            raise DataFileError(path, f"not a CIFAR python pickle ({type(exc).__name__}: {reason})", remedy) from exc
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataFileError(path, f"'data' must be uint8 rows of 3072 bytes (32x32 RGB), got {data.dtype} "
                                      f"{list(data.shape)}", remedy)
        if targets.ndim != 1 or targets.dtype.kind not in "iu" or len(targets) != len(data):
            raise DataFileError(path, f"{len(data)} images but {label_key!r} holds {targets.dtype} "
                                      f"{list(targets.shape)} (one integer label per image expected)", remedy)
        if len(targets) and (targets.min() < 0 or targets.max() >= num_classes):
            raise DataFileError(path, f"labels must lie in [0, {num_classes}), found "
                                      f"[{targets.min()}, {targets.max()}]", remedy)
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(targets.astype(np.int64))
    return np.ascontiguousarray(np.concatenate(images)), np.concatenate(labels)
