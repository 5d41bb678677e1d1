"""The authors' code, by name: each behaviour of configs/reference/authors_{tbso,bso}.yaml against a hand-computed sequence.

docs/fidelity.md lists what each option reproduces. The trace (``ndot_reference``) is tested in
tests/nn/test_neuron.py; ε placement, SGD momentum and lr schedule, the decay offset, BSO's momentum reset
and the two evaluation readings here.
"""

import math
from functools import partial

import lightning as L
import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from bso_lightning.optim import BSO, TBSO, CosineAnnealingToZero, FullPrecisionSGD, StepDecay, StepSchedule
from bso_lightning.optim import split_parameters
from bso_lightning.tasks.running_bn import batchnorm_state, load_batchnorm_state
from tests.tasks.conftest import make_task, make_trainer


@pytest.mark.parametrize("placement, flips", [("inside", False), ("outside", True)])
def test_eps_placement_reaches_tbso_and_decides_the_flip(placement, flips):
    """G = 1e-9·W everywhere, t = 0, γ = 5e-7, β1 = 1 − 1e-3, β2 = 1 − 1e-5, ε = 1e-10:
    M = 1e-12·W, v = 1e-5 · 1e-18 = 1e-23, so W·M = 1e-12 and
    inside:  γ·sqrt(v + ε) = 5e-7 · 1.0000000000e-5 = 5e-12   → 1e-12 < 5e-12, no flip;
    outside: W·M / (sqrt(v) + ε) = 1e-12 / (3.16e-12 + 1e-10) = 9.7e-3 > 5e-7, flip."""
    task = make_task(optimizer=partial(TBSO, eps_placement=placement), weight_storage="dense")  # (gradients by hand)
    optimizer = task._build_optimization()[0][0]
    assert optimizer.param_groups[0]["eps_placement"] == placement
    weights = list(task.split.binary)
    before = [w.detach().clone() for w in weights]
    for w in weights:
        w.grad = 1e-9 * w.detach().clone()
    optimizer.step(time_step=0)
    for w, b in zip(weights, before):
        torch.testing.assert_close(w.detach(), -b if flips else b)


def test_bad_reference_options_name_the_argument():
    for kwargs, name in (({"optimizer": partial(TBSO, eps_placement="middle")}, "eps_placement"),
                         ({"lr_scheduler": {"class_path": "step"}}, "lr_scheduler"),
                         ({"schedule": partial(StepSchedule, offset=-1)}, "offset"),
                         ({"schedule": {"class_path": "bso_lightning.optim.InverseSqrtSchedule",
                                        "init_args": {"offset": 1}}}, "offset")):  # (a schedule without an offset)
        with pytest.raises((ValueError, TypeError), match=name):
            make_task(**kwargs)


def test_bso_momentum_reset_on_flip_by_hand():
    """β = 0.9, γ = 0.05, W = (1, 1); G = (1, 0.1), (0, 0), (−0.7, 0):
    step 1: M = (0.1, 0.01), W·M = (0.1, 0.01) → first flips, W = (−1, 1); reset: M = (0, 0.01)  [kept: (0.1, 0.01)]
    step 2: M = (0, 0.009)                                                               [kept: (0.09, 0.009)]
    step 3: M = (−0.07, 0.0081), W·M = 0.07 > γ → flips back to +1   [kept: M = 0.011, W·M = −0.011: stays −1]."""
    for reset, final in ((True, [1.0, 1.0]), (False, [-1.0, 1.0])):
        w = torch.nn.Parameter(torch.ones(2))
        opt = BSO([w], threshold=0.05, beta=0.9, reset_momentum_on_flip=reset)
        for g in ([1.0, 0.1], [0.0, 0.0], [-0.7, 0.0]):
            w.grad = torch.tensor(g)
            opt.step()
        torch.testing.assert_close(w.detach(), torch.tensor(final))


def test_step_decay_offset_by_hand():
    """×0.1 every 50 epochs: offset 0 decays from epoch 50 on, offset 1 (the authors) from epoch 51."""
    paper, authors = StepDecay(50), StepDecay(50, offset=1)
    assert [paper(k) for k in (0, 49, 50, 51, 99, 100, 101)] == pytest.approx([1, 1, 0.1, 0.1, 0.1, 0.01, 0.01])
    assert [authors(k) for k in (0, 49, 50, 51, 99, 100, 101)] == pytest.approx([1, 1, 1, 0.1, 0.1, 0.1, 0.01])
    with pytest.raises(ValueError, match="offset"):
        StepDecay(50, offset=-1)


class _Record(L.Callback):
    """Per epoch: the SGD lr, the BSO threshold, and whether SGD keeps a momentum buffer."""

    def __init__(self):
        self.lrs, self.thresholds, self.buffers = [], [], []

    def on_train_epoch_start(self, trainer, task):
        binary_opt, fp_opt = task.optimizers()
        self.lrs.append(fp_opt.param_groups[0]["lr"])
        self.thresholds.append(binary_opt.param_groups[0]["threshold"])

    def on_train_epoch_end(self, trainer, task):
        fp_opt = task.optimizers()[1]
        self.buffers.append(any(s.get("momentum_buffer") is not None for s in fp_opt.state.values()))


@pytest.mark.parametrize("reference", ["paper", "authors"])
def test_full_precision_sgd_and_decay_offset_per_epoch(tmp_path, digits, reference):
    """3 epochs, lr 0.1, γ = 1e-3 × 0.1 every epoch.
    paper:   cosine lr 0.1·(1 + cos(πk/3))/2 = 0.1, 0.075, 0.025; momentum 0.9; γ = 1e-3, 1e-4, 1e-5.
    authors: lr 0.1, 0.1, 0.1; momentum 0 (no buffer); offset 1: γ = 1e-3, 1e-3, 1e-4."""
    authors = reference == "authors"
    L.seed_everything(0)
    lr_scheduler = (partial(torch.optim.lr_scheduler.ConstantLR, factor=1.0, total_iters=0) if authors
                    else CosineAnnealingToZero)
    task = make_task(optimizer=partial(BSO, threshold=1e-3),
                     schedule=partial(StepSchedule, every=1, factor=0.1, offset=1 if authors else 0),
                     lr_scheduler=lr_scheduler, fp_optimizer=partial(FullPrecisionSGD, momentum=0.0 if authors else 0.9),
                     time_steps=1)
    record = _Record()
    trainer = make_trainer(tmp_path, max_epochs=3, limit_train_batches=1, limit_val_batches=0, callbacks=[record])
    trainer.fit(task, datamodule=digits)
    cosine = [0.1 * (1 + math.cos(math.pi * k / 3)) / 2 for k in range(3)]
    assert record.lrs == pytest.approx([0.1] * 3 if authors else cosine)
    assert record.thresholds == pytest.approx([1e-3, 1e-3, 1e-4] if authors else [1e-3, 1e-4, 1e-5])
    assert record.buffers == [not authors] * 3


def test_cosine_over_a_nominal_t_max(tmp_path, digits):
    """CosineAnnealingToZero(epochs=6) (the authors' T_max = 300 of 400, scaled) over 3 epochs: lr = 0.1·(1 + cos(πk/6))/2."""
    L.seed_everything(0)
    task = make_task(optimizer=BSO, lr_scheduler=partial(CosineAnnealingToZero, epochs=6), time_steps=1)
    record = _Record()
    make_trainer(tmp_path, max_epochs=3, limit_train_batches=1, limit_val_batches=0,
                 callbacks=[record]).fit(task, datamodule=digits)
    assert record.lrs == pytest.approx([0.1 * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(3)])


def _accuracy(task, loader, num_classes=10):
    metric = MulticlassAccuracy(num_classes)
    task.eval()
    with torch.no_grad():
        for x, y in loader:
            metric(task(x), y)
    return float(metric.compute())


def test_evaluation_reports_re_estimated_and_running_batchnorm_accuracy(tmp_path, digits):
    L.seed_everything(0)
    task = make_task(optimizer=BSO, bn_recalibration_batches=3)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=6, limit_val_batches=0, limit_test_batches=3)
    trainer.fit(task, datamodule=digits)
    running = batchnorm_state(task.model)  # what training left behind
    metrics = trainer.test(task, datamodule=digits, verbose=False)[0]
    re_estimated = batchnorm_state(task.model)
    assert any(not torch.equal(a["running_mean"], b["running_mean"]) for a, b in zip(running, re_estimated))
    loader = [batch for _, batch in zip(range(3), digits.test_dataloader())]
    assert metrics["test/acc"] == pytest.approx(_accuracy(task, loader))
    load_batchnorm_state(task.model, running)
    assert metrics["test/acc_running_bn"] == pytest.approx(_accuracy(task, loader))
    assert metrics["test/acc_running_bn"] != metrics["test/acc"]  # (on these weights the two readings differ)
    validated = make_trainer(tmp_path, limit_val_batches=2).validate(task, datamodule=digits, verbose=False)[0]
    assert {"val/acc", "val/acc_running_bn"} <= set(validated)


def test_without_re_estimation_both_readings_are_one_forward(tmp_path, digits):
    L.seed_everything(0)
    task = make_task(optimizer=BSO, bn_recalibration_batches=0)
    calls = []
    task.model.register_forward_hook(lambda *_: calls.append(1))
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0, limit_test_batches=2)
    trainer.fit(task, datamodule=digits)
    calls.clear()
    metrics = trainer.test(task, datamodule=digits, verbose=False)[0]
    assert metrics["test/acc_running_bn"] == metrics["test/acc"]
    assert len(calls) == 2 * task.hparams.time_steps  # 2 batches × T steps, no second pass


def test_ndot_reference_trace_reaches_every_neuron():
    from bso_lightning.nn import OnlineLIFNode

    task = make_task(trace="ndot_reference")
    modes = {m.trace_mode for m in task.model.modules() if isinstance(m, OnlineLIFNode)}
    assert modes == {"ndot_reference"}
    assert split_parameters(task.model).binary
