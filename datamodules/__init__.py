"""LightningDataModules: the BSO paper's datasets, DVS128 Gesture and SHD, and the embedded digits task (docs/datasets.md)."""

from datamodules.base import BaseDataModule, DataFileError, DatasetNotFoundError
from datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from datamodules.cifar10_dvs import CIFAR10DVSDataModule
from datamodules.digits import DigitsDataModule
from datamodules.dvs128_gesture import DVS128GestureDataModule
from datamodules.imagenet import ImageNetDataModule
from datamodules.shd import SHDDataModule
from datamodules.speech_commands import SpeechCommandsDataModule

__all__ = [
    "BaseDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFAR10DVSDataModule",
    "DataFileError",
    "DatasetNotFoundError",
    "DigitsDataModule",
    "DVS128GestureDataModule",
    "ImageNetDataModule",
    "SHDDataModule",
    "SpeechCommandsDataModule",
]
