"""What every test folder shares: the tiny task and trainer, the digits data, the fixture-data generator, and
the hypothesis profile.

Helpers are plain functions (``from tests.conftest import make_task, make_trainer``); fixtures are found by
pytest. Hypothesis runs derandomized by default (profile ``ci``: the same examples on every run and machine);
``HYPOTHESIS_PROFILE=explore`` draws fresh random examples for a local bug hunt.
"""

from __future__ import annotations

import os
import importlib.util
from pathlib import Path
from functools import partial
from types import ModuleType
from typing import Any, Optional

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One torch thread per xdist worker (and per subprocess it starts): two workers on two cores with torch's default
    # threads each wait on each other's OpenMP threads (the quick start's end-to-end test took 10x longer).
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

import lightning as L
import pytest
from hypothesis import HealthCheck, settings

from bso_lightning.optim import CosineAnnealingToZero, StepSchedule
from bso_lightning.tasks import OnlineClassifier
from bso_lightning.tasks.base import TimeSteppedClassifier
from bso_lightning.trainers import quiet_trainer
from datamodules import DigitsDataModule
from tests.fixtures import make_fixtures

REPO = Path(__file__).resolve().parents[1]

settings.register_profile("ci", derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: The tiny online classifier of the task and reliability tests: T = 2, an 8-channel small CNN.
TINY_TASK: dict[str, Any] = dict(arch="small_cnn", arch_kwargs={"width": 8}, time_steps=2, bn_recalibration_batches=2)


def load_benchmark(name: str) -> ModuleType:
    """The script ``benchmarks/<name>.py`` as a module (loaded by path: ``benchmarks`` is no package)."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: What the task tests (tests/tasks) add to TINY_TASK: a 2-epoch cosine, so a trainer without max_epochs works.
TASK_TESTS: dict[str, Any] = {"lr_scheduler": partial(CosineAnnealingToZero, epochs=2)}
#: What the reliability tests add: γ/β ×0.5 every epoch, dense weights (the cases edit and name ``model.3.weight``;
#: packed storage: tests/tasks/test_weight_storage.py, tests/nn/test_packed.py).
RELIABILITY_TESTS: dict[str, Any] = {"schedule": partial(StepSchedule, every=1, factor=0.5), "weight_storage": "dense"}


def make_task(cls: type[TimeSteppedClassifier] = OnlineClassifier, seed: Optional[int] = None,
              preset: Optional[dict[str, Any]] = None, **kwargs: Any) -> TimeSteppedClassifier:
    """The one task factory of the tests: ``cls(**TINY_TASK, **preset, **kwargs)``; with ``seed``,
    ``L.seed_everything(seed)`` first (the initial weights). ``preset``: :data:`TASK_TESTS`, :data:`RELIABILITY_TESTS`."""
    if seed is not None:
        L.seed_everything(seed)
    return cls(**{**TINY_TASK, **(preset or {}), **kwargs})


def make_trainer(root: Path, **kwargs: Any) -> L.Trainer:
    """A quiet, deterministic CPU trainer writing under ``root`` (``bso_lightning.trainers.quiet_trainer``)."""
    return quiet_trainer(**{"default_root_dir": root, "deterministic": True, **kwargs})


def digits_data(batch_size: int = 16) -> DigitsDataModule:
    """The embedded digits task (no download) in batches of 16."""
    return DigitsDataModule(batch_size=batch_size)


@pytest.fixture
def digits() -> DigitsDataModule:
    return digits_data()


@pytest.fixture(scope="session")
def fixtures_module() -> ModuleType:
    """``tests/fixtures/make_fixtures.py``: writes tiny datasets in their real on-disk formats."""
    return make_fixtures
