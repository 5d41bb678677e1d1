"""The held-out accuracy of the current weights next to the running training accuracy (warned once when they
diverge), and the γ/β schedules that are relative to the run's length."""

from __future__ import annotations

import warnings
from functools import partial

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from bso_lightning.optim import BSO, TBSO, RunExponentialSchedule, RunStepSchedule
from bso_lightning.tasks import gap
from bso_lightning.tasks.gap import DEFAULT_GAP_MARGIN, AccuracyGapMonitor, AccuracyGapWarning
from tests.tasks.conftest import make_task, make_trainer


def test_monitor_warns_once_above_the_margin():
    monitor = AccuracyGapMonitor(margin=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor.check(0.90, 0.86, "here") == pytest.approx(0.04)  # inside the margin: quiet
        assert monitor.check(0.80, 0.95, "here") == pytest.approx(-0.15)  # held-out better: quiet
    with pytest.warns(AccuracyGapWarning, match=r"epoch 3: .* 55\.9% .* 90\.7% .* gap of 34\.8 points"):
        monitor.check(0.907, 0.559, "epoch 3")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor.check(0.99, 0.10, "again")  # once per run
    assert DEFAULT_GAP_MARGIN == 0.05
    with pytest.raises(ValueError, match=r"margin must lie in \[0, 1\]"):
        AccuracyGapMonitor(margin=5)


def _loader(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)),
                      batch_size=8)


def test_validation_logs_the_gap_and_warns_once(tmp_path, monkeypatch):
    monkeypatch.setattr(gap, "MIN_BATCHES_FOR_WARNINGS", 0)  # (validation alone: no training batch has run)
    task = make_task(seed=0)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=2)

    def validate_with_running_train_acc(correct: bool):
        task.train_acc.reset()
        y = torch.arange(10)
        task.train_acc.update(torch.nn.functional.one_hot(y if correct else (y + 1) % 10, 10).float(), y)
        return trainer.validate(task, dataloaders=_loader(), verbose=False)[0]

    with pytest.warns(AccuracyGapWarning, match="the running training accuracy is 100.0%"):
        metrics = validate_with_running_train_acc(correct=True)  # an untrained net on random labels: far below
    assert metrics["val/train_acc_running"] == pytest.approx(1.0)
    assert metrics["val/acc_gap"] == pytest.approx(1.0 - metrics["val/acc"], abs=1e-6)
    assert metrics["val/acc"] < 1.0 - DEFAULT_GAP_MARGIN
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyGapWarning)
        again = validate_with_running_train_acc(correct=True)  # warned once per run
        quiet = validate_with_running_train_acc(correct=False)  # running accuracy 0: no gap
    assert again["val/acc_gap"] == pytest.approx(metrics["val/acc_gap"])
    assert quiet["val/acc_gap"] == pytest.approx(-quiet["val/acc"], abs=1e-6)


class _PerfectRunningAccuracy(L.Callback):
    """Make the running training accuracy 100% before each validation, so the gap is large."""

    def on_validation_epoch_start(self, trainer, pl_module):
        y = torch.arange(10)
        pl_module.train_acc.reset()
        pl_module.train_acc.update(torch.nn.functional.one_hot(y, 10).float(), y)


@pytest.mark.parametrize("trainer_args, minimum, warns", [
    ({"fast_dev_run": True}, 0, False),  # a smoke run never warns
    ({"max_epochs": 1}, None, False),  # 3 batches < MIN_BATCHES_FOR_WARNINGS
    ({"max_epochs": 1}, 3, True),  # the same run counted as long enough warns
])
def test_gap_warning_is_quiet_on_a_handful_of_batches(tmp_path, monkeypatch, trainer_args, minimum, warns):
    if minimum is not None:
        monkeypatch.setattr(gap, "MIN_BATCHES_FOR_WARNINGS", minimum)
    task = make_task(seed=0)
    trainer = make_trainer(tmp_path, callbacks=[_PerfectRunningAccuracy()],
                           **({"max_epochs": 1, "limit_val_batches": 2} | trainer_args))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(task, train_dataloaders=_loader(n=24), val_dataloaders=_loader())
    assert any(issubclass(w.category, AccuracyGapWarning) for w in caught) == warns


@pytest.mark.parametrize("schedule, extra, final", [
    (RunExponentialSchedule, {"final": 1e-2}, 1e-2),
    (RunStepSchedule, {"fraction": 0.5, "factor": 0.1}, 1e-2),
], ids=["run_exp", "run_step"])
def test_run_schedules_reach_their_end_value_at_the_end_of_the_run(tmp_path, schedule, extra, final):
    task = make_task(seed=0, schedule=partial(schedule, **extra), optimizer=TBSO)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=_loader(n=24))  # 3 batches per epoch: a run of 6 batches
    group = task.optimizers()[0].param_groups[0]
    assert group["threshold"] == pytest.approx(5e-7 * final)
    assert 1 - group["betas"][0] == pytest.approx(1e-3 * final)
    assert group["betas"][1] == 0.99999  # β2 is not scheduled
    assert task.lr_schedulers()[1].last_k == 6  # advanced once per batch


def test_run_schedule_length_follows_max_steps(tmp_path):
    task = make_task(seed=0, schedule=partial(RunExponentialSchedule, final=1e-2), optimizer=BSO)
    # T = 2, real-time: 2·T = 4 optimizer steps per batch; max_steps 8 -> a run of 2 batches (of 3 per epoch)
    trainer = make_trainer(tmp_path, max_epochs=5, max_steps=8, limit_val_batches=0)
    trainer.fit(task, train_dataloaders=_loader(n=24))
    assert task.optimizers()[0].param_groups[0]["threshold"] == pytest.approx(5e-7 * 1e-2)


@pytest.mark.parametrize("kwargs, message", [
    ({"schedule": {"class_path": "cosine"}}, r"schedule: class_path 'cosine' is not a BinaryHyperparameterScheduler"),
    ({"schedule": partial(RunExponentialSchedule, final=0.0)}, r"final .* must be in \(0, 1\], got 0.0"),
    ({"schedule": partial(RunStepSchedule, fraction=2.0)}, r"fraction must be in \(0, 1\], got 2.0"),
])
def test_run_schedule_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_task(**kwargs)
