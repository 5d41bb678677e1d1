"""Tiny datasets in their real on-disk formats, written once per test session by the generator; the event-frame
DataModules at the small settings every test of them uses (plain functions: ``from tests.datamodules.conftest import
make_shd``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

from datamodules import CIFAR10DVSDataModule, DVS128GestureDataModule, SHDDataModule

DVS_TRAIN_PER_CLASS = 4  # CIFAR10-DVS's train_per_class in the tests (the paper's 900 of 1000, scaled down)


def make_cifar10_dvs(root, **kwargs) -> CIFAR10DVSDataModule:
    """T = 4 frames of 2x48x48, batches of 8, 4 of the fixture's 6 files per class for training."""
    return CIFAR10DVSDataModule(root=root, **{"batch_size": 8, "time_steps": 4, "train_per_class": DVS_TRAIN_PER_CLASS,
                                              **kwargs})


def make_dvs128_gesture(root, **kwargs) -> DVS128GestureDataModule:
    """T = 4 frames of 2x32x32, batches of 4."""
    return DVS128GestureDataModule(root=root, **{"batch_size": 4, "time_steps": 4, "image_size": 32, **kwargs})


def make_shd(root, **kwargs) -> SHDDataModule:
    """T = 4 frames of 1x8x16 (8 time bins by 16 channel groups), batches of 4."""
    return SHDDataModule(root=root, **{"batch_size": 4, "time_steps": 4, "time_bins": 8, "channel_groups": 16, **kwargs})


@pytest.fixture(scope="session")
def data_roots(tmp_path_factory, fixtures_module) -> dict[str, Path]:
    """``name -> root`` for every fixture dataset (shared: tests must not modify these)."""
    return fixtures_module.make_all(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def private_root(data_roots, tmp_path) -> Callable[[str], Path]:
    """Copy one fixture dataset into this test's own folder, for tests that modify or cache it."""

    def copy(name: str, folder: str | None = None) -> Path:
        target = tmp_path / (folder or name)
        shutil.copytree(data_roots[name], target, ignore=shutil.ignore_patterns("bso_cache"))
        return target

    return copy
