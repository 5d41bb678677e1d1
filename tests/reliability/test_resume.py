"""Exact resume: a run stopped after K batches and resumed from its checkpoint ends bit-for-bit like an
uninterrupted run (weights, optimizer state, schedules, metrics), mid-epoch included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from bso_lightning.callbacks.checkpoint_on_signal import CheckpointOnInterrupt
from bso_lightning.cli import build_cli
from bso_lightning.optim import CosineAnnealingToZero
from bso_lightning.tasks import BPTTLatentClassifier, OTTTClassifier
from bso_lightning.checkpoints import check_checkpoint
from datamodules import DigitsDataModule
from datamodules.sampling import EpochSeededSampler, ResumableDataLoader
from tests.reliability.helpers import (
    BATCHES, EPOCHS, REPO, InterruptAt, RecordBatches, RecordLearningRates, assert_same, cli_args, digits,
    make_baseline, make_task, make_trainer, snapshot,
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: EPOCHS x BATCHES batches."""
    recorder = RecordBatches()
    trainer = make_trainer(tmp_path_factory.mktemp("reference"), callbacks=[recorder])
    trainer.fit(make_task(), datamodule=digits())
    return snapshot(trainer), recorder.seen


# --------------------------------------------------------------------------- the data loader


def _labels(loader):
    return [batch[1].tolist() for batch in loader]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_resumes_its_epoch_after_the_consumed_batches(num_workers):
    data = DigitsDataModule(batch_size=100, num_workers=num_workers)
    data.setup("fit")
    loader = data.train_dataloader()
    assert isinstance(loader, ResumableDataLoader) and isinstance(loader.sampler, EpochSeededSampler)
    loader.sampler.set_epoch(3)
    full = _labels(loader)
    consumed = iter(loader)
    for _ in range(4):
        next(consumed)
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches": 4, "batch_size": 100}

    fresh = DigitsDataModule(batch_size=100, num_workers=num_workers)
    fresh.setup("fit")
    resumed = fresh.train_dataloader()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(3)  # Lightning sets the epoch after loading the state, before the first batch
    assert len(resumed) == len(full)
    assert _labels(resumed) == full[4:]
    assert _labels(resumed) == full  # only the resumed pass skips
    assert resumed.state_dict() == {"epoch": 3, "batches": len(full), "batch_size": 100}

    other_epoch = fresh.train_dataloader()
    other_epoch.load_state_dict(state)
    other_epoch.sampler.set_epoch(4)  # the saved epoch had ended: nothing to skip in the next one
    assert len(_labels(other_epoch)) == len(full)


# --------------------------------------------------------------------------- stop after K batches, resume


def test_interrupted_run_resumes_exactly_from_its_interrupt_and_periodic_checkpoints(tmp_path, reference,
                                                                                   restore_sigint):
    """Ctrl+C in the middle of batch 6 (epoch 1) stops at the end of that batch and saves ``interrupted.ckpt``;
    ``ModelCheckpoint(every_n_train_steps)`` saved at the end of the last batch of epoch 0; ``save_checkpoint``
    after a finished 1-epoch ``fit`` (epoch-end hooks and validation ran). All resume to the uninterrupted run, bit
    for bit."""
    saver = CheckpointOnInterrupt(dirpath=str(tmp_path / "ckpt"))
    periodic = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2 * 2 * BATCHES, save_top_k=-1,
                               filename="{step}")  # global_step counts both optimizers at each of the T = 2 steps
    ctrl_c = InterruptAt(2 * 2 * 5 + 1)  # batch 6 takes global steps 20..23
    trainer = make_trainer(tmp_path / "run", callbacks=[ctrl_c, saver, periodic], enable_checkpointing=True)
    with pytest.raises(SystemExit):  # Lightning turns KeyboardInterrupt into sys.exit(1) after on_exception
        trainer.fit(make_task(), datamodule=digits())
    assert trainer.interrupted and trainer.global_step == 2 * 2 * 6
    assert saver.saved_path == str(tmp_path / "ckpt" / "interrupted.ckpt")
    one_epoch = make_trainer(tmp_path / "one_epoch", max_epochs=1)
    one_epoch.fit(make_task(lr_scheduler=partial(CosineAnnealingToZero, epochs=EPOCHS)), datamodule=digits())  # the reference's learning-rate schedule
    one_epoch.save_checkpoint(tmp_path / "ckpt" / "after_fit.ckpt")
    expected, seen = reference
    for path, done in [(saver.saved_path, 6), (tmp_path / "ckpt" / f"step={2 * 2 * BATCHES}.ckpt", BATCHES),
                       (tmp_path / "ckpt" / "after_fit.ckpt", BATCHES)]:
        check_checkpoint(path)
        recorder = RecordBatches()
        resumed = make_trainer(tmp_path / f"resumed_{Path(path).stem}", callbacks=[recorder])
        resumed.fit(make_task(seed=123), datamodule=digits(), ckpt_path=path)  # other init: all from the file
        assert recorder.seen == seen[done:], path  # exactly the batches the stopped run had not trained on
        assert_same(expected, snapshot(resumed), str(path))


@pytest.mark.parametrize("cls", [OTTTClassifier, BPTTLatentClassifier])
def test_baseline_resumed_from_an_end_of_epoch_checkpoint_keeps_its_learning_rate(tmp_path, cls):
    """The baselines step their cosine schedule with the epoch's last batch, before ``ModelCheckpoint`` saves at
    the end of that batch: the resumed run trains the next epoch with the uninterrupted run's learning rates
    (stepped in ``on_train_epoch_end`` instead, it would restart the epoch one schedule step behind)."""
    steps_per_batch = 2  # OTTT: one optimizer at each of the T = 2 steps; BPTT: two optimizers once per batch
    reference_lrs = RecordLearningRates()
    periodic = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=steps_per_batch * BATCHES,
                               save_top_k=-1, filename="{step}")
    reference = make_trainer(tmp_path / "run", callbacks=[reference_lrs, periodic], enable_checkpointing=True)
    reference.fit(make_baseline(cls), datamodule=digits())
    assert reference.global_step == steps_per_batch * EPOCHS * BATCHES
    expected = snapshot(reference)

    resumed_lrs = RecordLearningRates()
    resumed = make_trainer(tmp_path / "resumed", callbacks=[resumed_lrs])
    ckpt = tmp_path / "ckpt" / f"step={steps_per_batch * BATCHES}.ckpt"  # the end of epoch 0's last batch
    resumed.fit(make_baseline(cls, seed=123), datamodule=digits(), ckpt_path=ckpt)
    assert resumed_lrs.seen == reference_lrs.seen[BATCHES:]
    assert resumed_lrs.seen[0][2] != reference_lrs.seen[0][2]  # the cosine has moved on since epoch 0
    assert_same(expected, snapshot(resumed))


class RecordTrainAccState(Callback):
    """The running training-accuracy state (per-class counts) after every training batch."""

    def __init__(self) -> None:
        self.seen: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.append({k: v.clone() for k, v in pl_module.train_acc.metric_state.items()})


@pytest.mark.parametrize("cls", [OTTTClassifier, BPTTLatentClassifier])
def test_baseline_resumed_mid_epoch_matches_the_uninterrupted_run(tmp_path, cls):
    """A checkpoint from the middle of epoch 1 resumes the baseline bit for bit, the epoch's running training
    accuracy included (it is saved with the checkpoint, as for the online classifier)."""
    steps_per_batch = 2
    mid_epoch = steps_per_batch * (BATCHES + 2)  # after batch 2 of epoch 1
    periodic = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=mid_epoch, save_top_k=1,
                               filename="{step}")
    reference_acc = RecordTrainAccState()
    reference = make_trainer(tmp_path / "run", callbacks=[periodic, reference_acc], enable_checkpointing=True)
    reference.fit(make_baseline(cls), datamodule=digits())
    expected = snapshot(reference)

    resumed_acc = RecordTrainAccState()
    resumed = make_trainer(tmp_path / "resumed", callbacks=[resumed_acc])
    resumed.fit(make_baseline(cls, seed=123), datamodule=digits(),
                ckpt_path=tmp_path / "ckpt" / f"step={mid_epoch}.ckpt")
    assert len(resumed_acc.seen) == BATCHES - 2
    assert_same(reference_acc.seen[BATCHES + 2:], resumed_acc.seen, "train_acc state")  # counts of the whole epoch
    assert_same(expected, snapshot(resumed))


def test_interrupt_in_the_middle_of_a_batch_saves_nothing(tmp_path, restore_sigint):
    """(A second Ctrl+C, or one under DDP.)"""
    saver = CheckpointOnInterrupt(dirpath=str(tmp_path / "ckpt"))
    trainer = make_trainer(tmp_path / "run", callbacks=[InterruptAt(5, raise_now=True), saver])
    with pytest.raises(SystemExit):
        trainer.fit(make_task(), datamodule=digits())
    assert trainer.global_step == 5  # stopped between the two optimizers' steps of a time step
    assert saver.saved_path is None and not (tmp_path / "ckpt").exists()


# --------------------------------------------------------------------------- a real SIGTERM, through the CLI


def test_sigterm_to_a_cli_run_leaves_a_checkpoint_that_resumes_exactly(tmp_path, cli_reference):
    marker = tmp_path / "waiting"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-m", "bso_lightning.cli", *cli_args(
            tmp_path / "killed", "--trainer.callbacks+=tests.reliability.helpers.WaitForSigterm",
            "--trainer.callbacks.k", "6", "--trainer.callbacks.marker", str(marker))],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), child.communicate(timeout=60)[0][-3000:]
        child.send_signal(signal.SIGTERM)
        output = child.communicate(timeout=120)[0]
    finally:
        if child.poll() is None:
            child.kill()
    saved = list((tmp_path / "killed").rglob("interrupted.ckpt"))
    assert len(saved) == 1, output[-3000:]
    assert saved[0].parent.name == "checkpoints"  # beside the periodic checkpoints, in the run's log folder
    check_checkpoint(saved[0])

    assert child.returncode == 128 + signal.SIGTERM  # not 0: the run did not finish

    resumed = build_cli(cli_args(tmp_path / "resumed", "--ckpt_path", str(saved[0])))
    assert resumed.trainer.global_step == 2 * 2 * EPOCHS * BATCHES
    assert_same(cli_reference, snapshot(resumed.trainer))
    assert torch.equal(resumed.trainer.lightning_module.faults.counts, torch.zeros(2, dtype=torch.int64))
