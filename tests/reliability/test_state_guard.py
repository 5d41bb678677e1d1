"""A non-finite trained state stops the run naming the tensor and the step, and is never saved (issue 14, case 2);
an epoch that drops too many batches fails, one summary per epoch (case 5)."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from bso_lightning.optim import FullPrecisionSGD
from bso_lightning.checkpoints import CheckpointError
from bso_lightning.tasks.faults import NonFiniteError, NonFiniteWarning
from bso_lightning.tasks.loop import OnlineLoop
from bso_lightning.tasks.state_guard import NonFiniteStateError, StateGuard, guarded_tensors
from datamodules import DigitsDataModule
from datamodules.sampling import EpochSeededSampler
from tests.reliability.helpers import make_task, make_trainer
from tests.reliability.test_nonfinite import SYNCING


class ScaledDigits(DigitsDataModule):
    """Digits with every training input multiplied by ``scale`` (1e30: finite, but far beyond any sane range)."""

    def __init__(self, scale: float) -> None:
        super().__init__(batch_size=16)
        self.scale = scale

    def setup(self, stage=None):
        if self.train_set is not None:
            return
        super().setup(stage)
        self.train_set.tensors[0].mul_(self.scale)


class NaNBatches(DigitsDataModule):
    """Digits whose training batches ``batches`` (of epoch 0) each hold one NaN pixel."""

    def __init__(self, batches) -> None:
        super().__init__(batch_size=16)
        self.batches = batches

    def setup(self, stage=None):
        if self.train_set is not None:
            return
        super().setup(stage)
        order = list(EpochSeededSampler(self.train_set, self.seed))
        for b in self.batches:
            self.train_set.tensors[0][order[16 * b], 0, 0, 0] = float("nan")


def test_overflowing_run_stops_naming_the_tensor_and_the_step_and_saves_nothing(tmp_path):
    """The issue's case: digits × 1e30 and lr 1e30 trained and saved `inf` silently (exit 0)."""
    checkpoints = tmp_path / "checkpoints"
    trainer = make_trainer(tmp_path, max_epochs=1, enable_checkpointing=True,
                           callbacks=[ModelCheckpoint(dirpath=checkpoints, every_n_train_steps=1, save_last=True)])
    with pytest.raises(NonFiniteStateError) as info:
        trainer.fit(make_task(fp_optimizer=partial(FullPrecisionSGD, lr=1e30)), datamodule=ScaledDigits(1e30))
    message = str(info.value)
    assert "epoch 0 (global_step 4): the trained state is not finite: " in message  # after the first batch (2T steps)
    assert "running_var (" in message and "Inf of" in message
    assert "the checkpoint was not written" in message or "no checkpoint of this state" in message
    assert not checkpoints.exists() or not any(checkpoints.iterdir())


def test_a_checkpoint_of_a_nonfinite_state_is_refused_and_not_written(tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0)
    task = make_task()
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=16))
    with torch.no_grad():
        task.model[0].weight.view(-1)[3] = float("nan")
    with pytest.raises(NonFiniteStateError, match=r"saving a checkpoint at epoch 1 \(global_step 4\): the trained "
                                                  r"state is not finite: model\.0\.weight \(1 NaN and 0 Inf of 72"):
        trainer.save_checkpoint(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()


def test_a_nonfinite_checkpoint_is_not_resumed(tiny_checkpoint, tmp_path):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["state_dict"]["model.1.running_var"][0] = float("inf")
    path = tmp_path / "inf.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}: holds non-finite tensors: model\.1\.running_var "
                                              r"\(0 NaN and 1 Inf"):
        make_trainer(tmp_path, max_epochs=2).fit(make_task(), datamodule=DigitsDataModule(batch_size=16),
                                                 ckpt_path=path)
    with pytest.raises(CheckpointError, match="holds non-finite tensors"):
        make_task(pretrained=str(path))


def test_the_state_check_is_one_fused_reduction_without_a_python_level_sync(monkeypatch):
    task = make_task()
    named = guarded_tensors(task.model, task.split.binary, prefix="model.")
    names = [n for n, _ in named]
    assert "model.0.weight" in names and "model.1.running_var" in names
    assert not any(any(t is b for b in task.split.binary) for _, t in named)  # ±1 weights are not scanned
    guard = StateGuard(named)
    with monkeypatch.context() as patch:
        for name in SYNCING:
            patch.setattr(torch.Tensor, name, lambda *a, **k: (_ for _ in ()).throw(AssertionError("sync")))
        ok = guard.ok()
    assert ok.dim() == 0 and bool(ok)


def test_an_epoch_that_drops_every_batch_fails(tmp_path):
    """Case 5: every batch non-finite used to be dropped one warning at a time, and fit exited 0 at chance."""
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    with pytest.raises(NonFiniteError, match=r"epoch 0: skipped 4 of 4 training batches whose input held NaN/Inf "
                                             r"\(batch 0: .*; batch 1: .*; batch 2: .*; \.\.\. and 1 more\): every "
                                             "batch of the epoch was dropped"):
        trainer.fit(make_task(), datamodule=NaNBatches(range(4)))


def test_an_epoch_that_drops_more_than_the_allowed_fraction_fails(tmp_path):
    trainer = make_trainer(tmp_path, max_epochs=1, limit_val_batches=0)
    with pytest.raises(NonFiniteError, match=r"skipped 2 of 4 .*more than max_skipped_fraction=0\.25"):
        trainer.fit(make_task(loop=OnlineLoop(max_skipped_fraction=0.25)), datamodule=NaNBatches([0, 2]))
    with pytest.raises(ValueError, match=r"max_skipped_fraction must lie in \[0, 1\], got 1\.5"):
        make_task(loop={"max_skipped_fraction": 1.5})


def test_one_summary_per_epoch(tmp_path, recwarn):
    trainer = make_trainer(tmp_path, max_epochs=2, limit_val_batches=0)
    trainer.fit(make_task(), datamodule=NaNBatches([0, 2]))  # 2 of 4 = 0.5: allowed by the default
    summaries = [str(w.message) for w in recwarn if issubclass(w.category, NonFiniteWarning)]
    assert len(summaries) == 1 and summaries[0].startswith("epoch 0: skipped 2 of 4 training batches"), summaries


class NaNTestDigits(DigitsDataModule):
    """Digits whose first ``n`` test samples (``None``: all) hold a NaN pixel."""

    def __init__(self, n=None) -> None:
        super().__init__(batch_size=16)
        self.n = n

    def setup(self, stage=None):
        if self.train_set is not None:
            return
        super().setup(stage)
        tensors = self.test_set.tensors[0] if hasattr(self.test_set, "tensors") else None
        assert tensors is not None, "the digits test split is a TensorDataset"
        tensors[: self.n if self.n is not None else len(tensors), 0, 0, 0] = float("nan")


def test_an_evaluation_on_only_nonfinite_inputs_fails_instead_of_reporting_chance(tmp_path):
    """Case 5, test side: `test` used to exit 0 at chance accuracy with test/loss nan."""
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, limit_test_batches=2)
    task = make_task(bn_recalibration_batches=0)
    data = NaNTestDigits()
    trainer.fit(task, datamodule=data)
    with pytest.raises(NonFiniteError, match=r"test \(epoch \d+\): 32 of 32 samples held NaN/Inf inputs.*every sample"):
        trainer.test(task, datamodule=data, verbose=False)


def test_an_evaluation_with_some_nonfinite_inputs_warns_once(tmp_path, recwarn):
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0, limit_test_batches=2)
    task = make_task(bn_recalibration_batches=0)
    data = NaNTestDigits(3)
    trainer.fit(task, datamodule=data)
    trainer.test(task, datamodule=data, verbose=False)
    messages = [str(w.message) for w in recwarn if issubclass(w.category, NonFiniteWarning)]
    assert len(messages) == 1 and "3 of 32 samples held NaN/Inf inputs" in messages[0], messages


def test_cost_benchmark_quick(tmp_path, capsys):
    """benchmarks/reliability_costs.py --quick: the per-batch state check costs far less than one forward+backward."""
    import importlib.util

    from tests.reliability.helpers import REPO

    spec = importlib.util.spec_from_file_location("reliability_costs", REPO / "benchmarks" / "reliability_costs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        results = module.main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert "| vgg11 | 35 |" in capsys.readouterr().out and (tmp_path / "reliability_costs.json").exists()
    vgg = results["state_check"][0]
    assert vgg["check_ms"] < vgg["forward_backward_ms"] / 10
    assert results["header_check"]["images"] == 100 and results["header_check"]["images_per_s"] > 0
