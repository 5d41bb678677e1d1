"""LightningDataModules for the datasets of the BSO paper and the embedded digits task."""

from datamodules.base import BaseDataModule
from datamodules.digits import DigitsDataModule

__all__ = ["BaseDataModule", "DigitsDataModule"]
