"""CheckpointOnInterrupt (callbacks/checkpoint_on_signal.py), in process: where it saves, and when it does not."""

import os
import signal
from functools import partial

import pytest
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from bso_lightning.callbacks.checkpoint_on_signal import CheckpointOnInterrupt
from bso_lightning.optim import CosineAnnealingToZero
from tests.conftest import digits_data, make_task, make_trainer


@pytest.fixture(autouse=True)
def restore_signals():
    """Lightning ignores SIGINT after a KeyboardInterrupt, and an interrupted fit may leave SIGTERM's handler."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, handler in handlers.items():
        signal.signal(s, handler)


class At(Callback):
    """Run ``action(trainer)`` at the end of training batch ``batch`` (and note the SIGINT handler then)."""

    def __init__(self, batch: int, action) -> None:
        self.batch, self.action, self.sigint_handler = batch, action, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.sigint_handler = signal.getsignal(signal.SIGINT)
        if batch_idx == self.batch:
            self.action(trainer)


def _fit(tmp_path, *callbacks, **trainer_kwargs):
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0,
                           callbacks=list(callbacks), **trainer_kwargs)
    trainer.fit(make_task(seed=0, lr_scheduler=partial(CosineAnnealingToZero, epochs=1)), datamodule=digits_data())
    return trainer


def _sigterm(trainer):
    os.kill(os.getpid(), signal.SIGTERM)  # Lightning's handler: stop at the end of this batch


def test_sigterm_saves_in_the_model_checkpoint_folder_and_exits_with_143(tmp_path):
    saver = CheckpointOnInterrupt()
    periodic = ModelCheckpoint(dirpath=tmp_path / "periodic")
    with pytest.raises(SystemExit) as stopped:
        _fit(tmp_path, At(1, _sigterm), saver, periodic, enable_checkpointing=True)
    assert stopped.value.code == 128 + signal.SIGTERM  # not 0: the run did not finish
    assert saver.saved_path == str(tmp_path / "periodic" / "interrupted.ckpt")
    assert os.path.getsize(saver.saved_path) > 0


def test_first_ctrl_c_stops_at_the_end_of_the_batch_and_saves(tmp_path):
    saver = CheckpointOnInterrupt(dirpath=str(tmp_path / "mine"), filename="stop")
    at = At(2, lambda trainer: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(SystemExit):
        _fit(tmp_path, at, saver)
    assert at.sigint_handler == saver._on_sigint  # deferred while training
    assert saver.saved_path == str(tmp_path / "mine" / "stop.ckpt") and os.path.exists(saver.saved_path)
    assert signal.getsignal(signal.SIGINT) != saver._on_sigint  # its handler is gone after the run


def test_default_folder_without_model_checkpoint_and_no_deferral(tmp_path):
    saver = CheckpointOnInterrupt(defer_sigint=False)
    before = signal.getsignal(signal.SIGINT)
    at = At(0, lambda trainer: None)
    trainer = _fit(tmp_path, at, saver)
    assert at.sigint_handler == before  # defer_sigint=False leaves Ctrl+C alone
    assert saver.checkpoint_path(trainer) == os.path.join(str(tmp_path), "checkpoints", "interrupted.ckpt")
    assert saver.saved_path is None  # a finished run saves nothing


def _raise(exception):
    def action(trainer):
        raise exception
    return action


def test_other_errors_and_an_interrupt_before_the_first_step_save_nothing(tmp_path):
    saver = CheckpointOnInterrupt(dirpath=str(tmp_path / "ckpt"))
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, At(1, _raise(RuntimeError("boom"))), saver)
    assert saver.saved_path is None

    class EarlyStop(Callback):
        def on_train_start(self, trainer, pl_module):
            raise KeyboardInterrupt

    with pytest.raises(SystemExit):
        _fit(tmp_path, EarlyStop(), saver)
    assert saver.saved_path is None and not (tmp_path / "ckpt").exists()


def test_an_empty_filename_is_refused():
    with pytest.raises(ValueError, match="filename"):
        CheckpointOnInterrupt(filename="")
