"""NaN/Inf in inputs or gradients: counted, logged, nothing updated; ``nonfinite="raise"`` stops with the culprit."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from bso_lightning.optim import split_parameters
from bso_lightning.tasks import OnlineClassifier
from bso_lightning.tasks.faults import NonFiniteError, NonFiniteWarning, all_finite, step_if
from bso_lightning.tasks.loop import OnlineLoop
from datamodules import DigitsDataModule
from datamodules.sampling import EpochSeededSampler
from tests.reliability.helpers import make_task, make_trainer

POISONED_BATCH = 1


class PoisonedDigits(DigitsDataModule):
    """Digits with one NaN pixel in one sample of training batch ``POISONED_BATCH`` of epoch 0."""

    def __init__(self) -> None:
        super().__init__(batch_size=16)

    def setup(self, stage=None):
        if self.train_set is not None:
            return
        super().setup(stage)
        order = list(EpochSeededSampler(self.train_set, self.seed))  # epoch 0
        self.train_set.tensors[0][order[16 * POISONED_BATCH + 3], 0, 2, 2] = float("nan")


def _state(trainer):
    """Parameters and optimizer state (what an update would change), cloned."""
    module = trainer.lightning_module
    return {"params": {k: v.detach().clone() for k, v in module.named_parameters()},
            "optimizers": [{id(p): {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
                            for p, s in o.state.items()} for o in trainer.optimizers]}


def _assert_equal_states(a, b):
    for name in a["params"]:
        assert torch.equal(a["params"][name], b["params"][name]), name
    for opt_a, opt_b in zip(a["optimizers"], b["optimizers"]):
        assert opt_a.keys() == opt_b.keys()
        for key in opt_a:
            for name in opt_a[key]:
                assert torch.equal(opt_a[key][name], opt_b[key][name]), name


class AroundBatch(Callback):
    """State at the start and end of training batch ``POISONED_BATCH`` (epoch 0); ``setup`` runs at its start."""

    def __init__(self, setup=None) -> None:
        self.setup_fn, self.before, self.after, self.handles = setup, None, None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == POISONED_BATCH:
            self.before = _state(trainer)
            if self.setup_fn is not None:
                self.handles = self.setup_fn(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == 0 and batch_idx == POISONED_BATCH:
            self.after = _state(trainer)
            for handle in self.handles:
                handle.remove()


def _nan_gradients(pl_module):
    """NaN gradients for the first conv (full precision) and the first binary weight, at every time step."""
    binary = split_parameters(pl_module.model).binary[0]
    return [p.register_hook(lambda g: torch.full_like(g, float("nan"))) for p in (pl_module.model[0].weight, binary)]


def test_nonfinite_input_batch_is_skipped_counted_and_logged(tmp_path):
    around = AroundBatch()
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[around], limit_val_batches=1)
    task = make_task()
    with pytest.warns(NonFiniteWarning) as warned:
        trainer.fit(task, datamodule=PoisonedDigits())
    summaries = [str(w.message) for w in warned if issubclass(w.category, NonFiniteWarning)]
    assert summaries == [f"epoch 0: skipped 1 of 4 training batches whose input held NaN/Inf (batch {POISONED_BATCH}: "
                         f"its input holds 1 NaN and 0 Inf of {16 * 16 * 16} values) (nonfinite='skip')"]
    _assert_equal_states(around.before, around.after)  # no flip, no momentum, no SGD step
    assert trainer.global_step == 2 * 2 * 3  # 3 of the 4 batches stepped
    metrics = trainer.callback_metrics
    assert metrics["faults/nonfinite_inputs"] == 1 and metrics["faults/nonfinite_grads"] == 0
    # BatchNorm recalibration leaves the poisoned batch out too: evaluation stays finite
    assert all(bool(torch.isfinite(b).all()) for b in task.model.buffers())
    assert torch.isfinite(metrics["val/loss"])

    trainer.save_checkpoint(tmp_path / "faults.ckpt")  # the counts survive a checkpoint
    reloaded = OnlineClassifier.load_from_checkpoint(tmp_path / "faults.ckpt")
    assert reloaded.faults.counts.tolist() == [1, 0]


def test_nonfinite_gradient_changes_nothing_it_touches_and_training_continues(tmp_path):
    around = AroundBatch(_nan_gradients)
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[around], limit_val_batches=1)
    task = make_task()
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=16))
    before, after = around.before, around.after
    binary_name = next(n for n, p in task.named_parameters() if p is split_parameters(task.model).binary[0])
    full_precision = [n for n, p in task.named_parameters() if any(p is q for q in task.split.full_precision)]
    for name in [binary_name, *full_precision]:  # no flip, no SGD step
        assert torch.equal(before["params"][name], after["params"][name]), name
    binary_opt = trainer.optimizers[0]
    first, second = split_parameters(task.model).binary[:2]
    for key in ("momentum", "v"):  # the skipped tensor's T-BSO state is untouched, the others moved on
        assert torch.equal(before["optimizers"][0][id(first)][key], after["optimizers"][0][id(first)][key])
        assert not torch.equal(before["optimizers"][0][id(second)][key], after["optimizers"][0][id(second)][key])
    sgd = trainer.optimizers[1]
    for p in task.split.full_precision:  # SGD momentum buffers restored on the device
        buffers = [state["optimizers"][1][id(p)]["momentum_buffer"] for state in (before, after)]
        assert torch.equal(*buffers)
        assert torch.isfinite(sgd.state[p]["momentum_buffer"]).all()
    assert binary_opt.nonfinite_counts().tolist()[:2] == [2, 0]  # T = 2 steps skipped for the first tensor
    assert trainer.callback_metrics["faults/nonfinite_grads"] == 2 + 2  # + the 2 skipped SGD steps
    assert trainer.global_step == 2 * 2 * 4
    assert all(bool(torch.isfinite(p).all()) for p in task.parameters())
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


@pytest.mark.parametrize("fault, message", [
    ("input", rf"batch {POISONED_BATCH} of epoch 0: its input holds 1 NaN and 0 Inf"),
    ("gradient", rf"batch {POISONED_BATCH} of epoch 0, time step 0: the gradient of model\.0\.weight \(72 NaN"
                 r".*model\.3\.weight \(1152 NaN"),
])
def test_raise_mode_stops_before_the_update_naming_the_culprit(tmp_path, fault, message):
    around = AroundBatch(_nan_gradients if fault == "gradient" else None)
    states = []
    around.on_exception = lambda trainer, pl_module, exception: states.append(_state(trainer))
    trainer = make_trainer(tmp_path, max_epochs=1, callbacks=[around], limit_val_batches=0)
    data = PoisonedDigits() if fault == "input" else DigitsDataModule(batch_size=16)
    with pytest.raises(NonFiniteError, match=message):
        trainer.fit(make_task(loop=OnlineLoop(nonfinite="raise")), datamodule=data)
    _assert_equal_states(around.before, states[0])


def test_step_if_leaves_sgd_untouched_without_a_host_sync():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    reference = torch.nn.Parameter(p.detach().clone())
    sgd = torch.optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-4)
    fresh = torch.optim.SGD([reference], lr=0.1, momentum=0.9, weight_decay=1e-4)
    p.grad = torch.tensor([1.0, float("nan"), 0.0, float("inf"), 2.0])
    ok = all_finite([p.grad])
    assert ok.dim() == 0 and not bool(ok)
    step_if(sgd, ok)  # a skipped first step: unchanged, and the buffer it created is harmless (zeros)
    assert torch.equal(p, reference) and torch.isfinite(sgd.state[p]["momentum_buffer"]).all()
    for optimizer, param in ((sgd, p), (fresh, reference)):
        param.grad = torch.arange(5.0)
        step_if(optimizer, all_finite([param.grad])) if optimizer is sgd else optimizer.step()
    assert torch.equal(p, reference)  # then identical to an optimizer that never saw the bad step
    assert torch.equal(sgd.state[p]["momentum_buffer"], fresh.state[reference]["momentum_buffer"])


SYNCING = ["__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy"]


def _sgd_with_bad_gradient(device):
    params = [torch.nn.Parameter(torch.randn(4, 3, device=device)), torch.nn.Parameter(torch.randn(7, device=device))]
    sgd = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)
    for p in params:
        p.grad = torch.randn_like(p)
    sgd.step()  # momentum buffers exist: the steady state
    before = [p.detach().clone() for p in params]
    params[1].grad = torch.full_like(params[1], float("inf"))
    params[0].grad = torch.randn_like(params[0])
    return sgd, params, before


def test_skipping_a_full_precision_step_uses_no_python_level_sync(monkeypatch):
    sgd, params, before = _sgd_with_bad_gradient("cpu")

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device sync while deciding or skipping the step")

    with monkeypatch.context() as patch:
        for name in SYNCING:
            patch.setattr(torch.Tensor, name, forbidden)
        step_if(sgd, all_finite([p.grad for p in params]))
    assert all(torch.equal(a, b) for a, b in zip(before, params))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_skipping_a_full_precision_step_does_not_sync():
    sgd, params, before = _sgd_with_bad_gradient("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step_if(sgd, all_finite([p.grad for p in params]))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(a, b) for a, b in zip(before, params))
