"""Shared pieces of the reliability tests: a tiny task, trainers, state snapshots, stop-after-K callbacks."""

from __future__ import annotations

import hashlib
import os
import signal
import time
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from bso_lightning.tasks import OnlineClassifier
from bso_lightning.tasks.base import TimeSteppedClassifier
from tests import conftest
from tests.conftest import REPO
from tests.conftest import digits_data as digits

EPOCHS = 2
BATCHES = 4  # training batches per epoch (limit_train_batches)


#: ``tests.conftest.make_task`` (seed 0) with the ``RELIABILITY_TESTS`` preset: a step schedule, dense weights.
make_task = partial(conftest.make_task, seed=0, preset=conftest.RELIABILITY_TESTS)


def make_baseline(cls: type[TimeSteppedClassifier], seed: int = 0, **kwargs: Any) -> TimeSteppedClassifier:
    """A baseline (``OTTTClassifier``, ``BPTTLatentClassifier``) of the same tiny size as :func:`make_task`."""
    return conftest.make_task(cls, seed=seed, **kwargs)


def make_trainer(root: Path, **kwargs: Any) -> L.Trainer:
    """``tests.conftest.make_trainer`` for EPOCHS epochs of BATCHES batches and one validation batch."""
    return conftest.make_trainer(root, **{"max_epochs": EPOCHS, "limit_train_batches": BATCHES,
                                          "limit_val_batches": 1, **kwargs})


def snapshot(trainer: L.Trainer) -> dict[str, Any]:
    """Everything an exact resume must reproduce: weights, buffers, optimizer and schedule state, metrics."""
    module = trainer.lightning_module
    return {
        "model": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "optimizers": [o.state_dict() for o in trainer.optimizers],
        "schedulers": [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs],
        "metrics": {k: v.detach().clone() for k, v in trainer.callback_metrics.items()},
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
    }


def assert_same(a: Any, b: Any, where: str = "") -> None:
    """Bit-for-bit equality of nested dicts/lists of tensors and plain values."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


class RecordBatches(Callback):
    """Remember (epoch, batch_idx, labels) of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, list[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((trainer.current_epoch, batch_idx, batch[1].tolist()))


class RecordLearningRates(Callback):
    """Remember (epoch, batch_idx, the learning rate of every parameter group) before every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, list[float]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        lrs = [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups]
        self.seen.append((trainer.current_epoch, batch_idx, lrs))


class InterruptAt(Callback):
    """Just before optimizer step number ``step`` (``global_step``), in the middle of a batch: send this
    process a real SIGINT (Ctrl+C), or with ``raise_now`` raise ``KeyboardInterrupt`` right there."""

    def __init__(self, step: int, raise_now: bool = False) -> None:
        self.step, self.raise_now = step, raise_now

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == self.step:
            if self.raise_now:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)


class WaitForSigterm(Callback):
    """In a subprocess: after ``k`` batches write ``marker`` and wait (up to 60 s) for the parent's SIGTERM."""

    def __init__(self, k: int, marker: str) -> None:
        self.k, self.marker, self.count = k, marker, 0

    def on_train_batch_end(self, trainer, *args):
        self.count += 1
        if self.count == self.k:
            Path(self.marker).write_text(str(os.getpid()))
            deadline = time.monotonic() + 60
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.05)


class DumpState(Callback):
    """Each process writes ``<dirpath>/rank<r>.pt`` at the end of ``fit``: weights, buffers, optimizer state,
    metrics, the training batches it saw and what the telemetry callbacks computed."""

    def __init__(self, dirpath: str) -> None:
        self.dirpath = dirpath
        self.batches: list[tuple[int, list[str]]] = []  # (epoch, md5 of each sample)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        x = batch[0].detach().cpu().float().contiguous()
        self.batches.append((trainer.current_epoch, [hashlib.md5(row.numpy().tobytes()).hexdigest() for row in x]))

    def on_fit_end(self, trainer, pl_module):
        state = snapshot(trainer)
        state["batches"] = self.batches
        state["world_size"] = trainer.world_size
        state["momentum_dtypes"] = [str(s["momentum"].dtype) for s in trainer.optimizers[0].state.values()]
        for callback in trainer.callbacks:
            if hasattr(callback, "history"):
                state["flip_history"] = callback.history
            if hasattr(callback, "last_metrics"):
                state["memory"] = callback.last_metrics
        Path(self.dirpath).mkdir(parents=True, exist_ok=True)
        torch.save(state, Path(self.dirpath) / f"rank{trainer.global_rank}.pt")


def cli_args(root, *extra):
    """``bso-lightning fit`` arguments of the tiny reference run (2 epochs of 4 batches, T = 2, width 8)."""
    return ["fit", "--trainer.default_root_dir", str(root), "--trainer.max_epochs", str(EPOCHS),
            "--trainer.limit_train_batches", str(BATCHES), "--trainer.limit_val_batches", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.deterministic", "true", "--trainer.num_sanity_val_steps", "0",
            "--model.init_args.arch_kwargs", '{"width": 8}', "--model.init_args.time_steps", "2",
            "--model.init_args.bn_recalibration_batches", "2", "--model.init_args.schedule", "bso_lightning.optim.StepSchedule",
            "--model.init_args.schedule.every", "1", "--model.init_args.schedule.factor", "0.5",
            "--data.init_args.batch_size", "16", "--test_after_fit", "false", *extra]
