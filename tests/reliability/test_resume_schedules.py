"""Exact resume under the default settings and every schedule (issue 19): a run interrupted by Ctrl+C in the
middle of an epoch, and runs resumed from checkpoints saved mid-epoch and at the end of an epoch, end bit for bit
like the uninterrupted run — weights (packed bits included), BatchNorm statistics, optimizer and schedule state,
metrics — and train exactly the batches the stopped run had not trained on.

Unlike the other reliability cases these use the library's defaults (packed weights, stepping in the backward,
``schedule: run_exp``), only the model is tiny; the ``run_*`` schedules need the run's length, which the fit loop
knows only after it restored its position (``OnlineClassifier.on_train_start``)."""

from __future__ import annotations

import signal
from functools import partial
from pathlib import Path

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from bso_lightning.callbacks.checkpoint_on_signal import CheckpointOnInterrupt
from bso_lightning.optim import BSO, TBSO, ConstantSchedule, InverseSqrtSchedule, RunExponentialSchedule
from bso_lightning.optim import RunInverseSqrtSchedule, RunStepSchedule, StepSchedule
from bso_lightning.tasks.loop import OnlineLoop
from tests import conftest
from tests.reliability.helpers import BATCHES, InterruptAt, RecordBatches, assert_same, digits, make_trainer, snapshot

#: T = 2 time steps x two optimizers: global_step grows by 4 per training batch.
STEPS_PER_BATCH = 4
MID_EPOCH = BATCHES + 2  # after batch 2 of epoch 1
END_OF_EPOCH = BATCHES  # after the last batch of epoch 0

#: Each schedule at the library's defaults, and the issue-12 options on the default schedule.
#: (The per-epoch schedules are made to move within this 2-epoch run.)
SCHEDULES = {"constant": ConstantSchedule, "step": partial(StepSchedule, every=1, factor=0.5),
             "inv_sqrt": partial(InverseSqrtSchedule, scale=0.5), "run_step": RunStepSchedule,
             "run_exp": RunExponentialSchedule, "run_inv_sqrt": RunInverseSqrtSchedule}
CASES = [{"schedule": s} for s in SCHEDULES] + [
    {"momentum_dtype": "bfloat16"},
    {"step_in_backward": False},
    {"weight_storage": "dense", "step_in_backward": False},
    {"optimizer": "bso", "reset_momentum_on_flip": True, "momentum_dtype": "bfloat16"},
]


def _task(seed: int, case: dict):
    """The case's settings (named as in the test ids) as the classifier's arguments."""
    case = dict(case)
    kwargs = {"schedule": SCHEDULES[case.pop("schedule")]} if "schedule" in case else {}
    if "weight_storage" in case:
        kwargs["weight_storage"] = case.pop("weight_storage")
    if "step_in_backward" in case:
        kwargs["loop"] = OnlineLoop(step_in_backward=case.pop("step_in_backward"))
    if case:
        optimizer = BSO if case.pop("optimizer", "tbso") == "bso" else TBSO
        kwargs["optimizer"] = partial(optimizer, **case)
    return conftest.make_task(seed=seed, **kwargs)


@pytest.fixture
def restore_sigint():
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_resume_is_exact_mid_epoch_and_at_the_end_of_an_epoch(tmp_path, case, restore_sigint):
    ckpt = tmp_path / "ckpt"
    periodic = ModelCheckpoint(dirpath=ckpt, every_n_train_steps=STEPS_PER_BATCH * 2, save_top_k=-1,
                               filename="{step}")  # after batches 2, 4 (the end of epoch 0), 6 and 8
    per_epoch = ModelCheckpoint(dirpath=ckpt / "epochs", save_top_k=-1)  # the CLI's: after each validation
    batches = RecordBatches()
    reference = make_trainer(tmp_path / "reference", callbacks=[periodic, per_epoch, batches], enable_checkpointing=True)
    reference.fit(_task(0, case), datamodule=digits())
    expected = snapshot(reference)

    saver = CheckpointOnInterrupt(dirpath=str(ckpt))  # Ctrl+C during batch 6 (epoch 1): stops after it, saves
    stopped = make_trainer(tmp_path / "stopped", callbacks=[InterruptAt(STEPS_PER_BATCH * 5 + 1), saver])
    with pytest.raises(SystemExit):
        stopped.fit(_task(0, case), datamodule=digits())
    assert saver.saved_path == str(ckpt / "interrupted.ckpt")

    for path, done in [(ckpt / "interrupted.ckpt", 6), (ckpt / f"step={STEPS_PER_BATCH * MID_EPOCH}.ckpt", MID_EPOCH),
                       (ckpt / f"step={STEPS_PER_BATCH * END_OF_EPOCH}.ckpt", END_OF_EPOCH),
                       (ckpt / "epochs" / f"epoch=0-step={STEPS_PER_BATCH * END_OF_EPOCH}.ckpt", END_OF_EPOCH)]:
        resumed_batches = RecordBatches()
        resumed = make_trainer(tmp_path / f"resumed_{Path(path).stem}", callbacks=[resumed_batches])
        resumed.fit(_task(123, case), datamodule=digits(), ckpt_path=path)  # another init: all from the file
        assert resumed_batches.seen == batches.seen[done:], path.name  # the batches not yet trained, in order
        assert_same(expected, snapshot(resumed), path.name)
