import signal
from pathlib import Path

import numpy as np
import pytest

from bso_lightning.cli import build_cli
from tests.reliability.helpers import cli_args, snapshot


@pytest.fixture
def restore_sigint():
    """Lightning ignores SIGINT after handling a KeyboardInterrupt; give pytest its Ctrl+C back."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.fixture
def cifar10_root(tmp_path_factory, fixtures_module) -> Path:
    """A tiny CIFAR-10 in torchvision's pickle layout, written by the checked-in fixture generator."""
    return fixtures_module.write_cifar10(tmp_path_factory.mktemp("data"), np.random.default_rng(0))


@pytest.fixture(scope="session")
def cli_reference(tmp_path_factory):
    """Snapshot of one uninterrupted ``bso-lightning fit`` run of :func:`cli_args` (in this process)."""
    return snapshot(build_cli(cli_args(tmp_path_factory.mktemp("cli_reference"))).trainer)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint of the tiny model (width 8) after one training batch (tests must not modify it)."""
    from tests.reliability.helpers import digits, make_task, make_trainer

    root = tmp_path_factory.mktemp("tiny_ckpt")
    trainer = make_trainer(root, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    trainer.fit(make_task(), datamodule=digits())
    trainer.save_checkpoint(root / "tiny.ckpt")
    return root / "tiny.ckpt"
