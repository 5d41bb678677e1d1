"""Decay rules and the scheduler that applies them to threshold and 1 - beta."""

import json
import math

import pytest
import torch

from bso_lightning.optim import (
    BSO,
    TBSO,
    BinaryHyperparameterScheduler,
    ConstantDecay,
    InverseSqrtDecay,
    StepDecay,
)


def _w():
    return torch.nn.Parameter(torch.ones(3))


def test_decay_rules():
    assert [ConstantDecay()(k) for k in (0, 1, 1000)] == [1.0, 1.0, 1.0]
    step = StepDecay(every=50)
    assert [step(k) for k in (0, 49, 50, 99, 100)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    assert StepDecay(every=2, factor=0.5)(5) == 0.25
    inv = InverseSqrtDecay()
    assert [inv(k) for k in (0, 3, 8, 99)] == pytest.approx([1, 1 / 2, 1 / 3, 1 / 10])
    assert InverseSqrtDecay(scale=2.0)(6) == pytest.approx(0.5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: StepDecay(every=0), r"every must be an int >= 1, got 0"),
        (lambda: StepDecay(every=2.5), r"every must be an int >= 1"),
        (lambda: StepDecay(every=10, factor=0.0), r"factor must be in \(0, 1\], got 0\.0"),
        (lambda: StepDecay(every=10, factor=1.5), r"factor must be in \(0, 1\]"),
        (lambda: InverseSqrtDecay(scale=0.0), r"scale must be a finite number > 0, got 0\.0"),
        (lambda: InverseSqrtDecay(scale=-1.0), r"scale must be a finite number > 0"),
        (lambda: ConstantDecay()(-1), r"k must be an int >= 0"),
    ],
)
def test_bad_decay_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_scheduler_on_bso_groups():
    a, b = _w(), _w()
    opt = BSO([{"params": [a]}, {"params": [b], "threshold": 1e-3, "beta": 0.9}], threshold=1e-6, beta=0.999)
    sched = BinaryHyperparameterScheduler(opt, StepDecay(every=2))
    assert sched.last_k == 0 and opt.param_groups[0]["threshold"] == 1e-6
    sched.step()
    assert opt.param_groups[0]["threshold"] == 1e-6  # k = 1: factor 1
    sched.step()
    assert sched.last_k == 2
    assert opt.param_groups[0]["threshold"] == pytest.approx(1e-7)
    assert opt.param_groups[0]["beta"] == pytest.approx(1 - 1e-4)
    assert opt.param_groups[1]["threshold"] == pytest.approx(1e-4)
    assert opt.param_groups[1]["beta"] == pytest.approx(0.99)


def test_scheduler_on_tbso_decays_beta1_only():
    opt = TBSO([_w()], threshold=1e-6, betas=(0.999, 0.99999))
    sched = BinaryHyperparameterScheduler(opt, InverseSqrtDecay(), decay_threshold=False)
    for _ in range(3):
        sched.step()
    beta1, beta2 = opt.param_groups[0]["betas"]
    assert beta1 == pytest.approx(1 - 1e-3 / 2) and beta2 == 0.99999
    assert opt.param_groups[0]["threshold"] == 1e-6


def test_scheduler_can_leave_beta_alone():
    opt = BSO([_w()], threshold=1.0, beta=0.9)
    sched = BinaryHyperparameterScheduler(opt, StepDecay(every=1), decay_one_minus_beta=False)
    sched.step()
    assert opt.param_groups[0]["threshold"] == pytest.approx(0.1) and opt.param_groups[0]["beta"] == 0.9


def test_scheduler_state_dict_round_trip():
    opt = TBSO([_w()], threshold=1e-6, betas=(0.999, 0.99999))
    sched = BinaryHyperparameterScheduler(opt, StepDecay(every=3))
    for _ in range(4):
        sched.step()
    state = sched.state_dict()
    assert json.loads(json.dumps(state)) == state  # plain python numbers

    opt2 = TBSO([_w()], threshold=1.0, betas=(0.5, 0.99999))  # different bases: the state wins
    sched2 = BinaryHyperparameterScheduler(opt2, StepDecay(every=3))
    sched2.load_state_dict(state)
    assert sched2.last_k == 4
    assert opt2.param_groups[0]["threshold"] == opt.param_groups[0]["threshold"]
    assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"]
    for _ in range(3):
        sched.step()
        sched2.step()
        assert opt2.param_groups[0]["threshold"] == opt.param_groups[0]["threshold"]
        assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"]
    assert opt.param_groups[0]["threshold"] == pytest.approx(1e-8)


def test_scheduler_errors():
    with pytest.raises(ValueError, match="needs a BSO or TBSO optimizer"):
        BinaryHyperparameterScheduler(torch.optim.SGD([_w()], lr=0.1), ConstantDecay())
    opt = BSO([_w()], beta=1 - 1e-8)
    sched = BinaryHyperparameterScheduler(opt, StepDecay(every=1))
    with pytest.raises(ValueError, match="beta would round to 1.0"):
        for _ in range(20):
            sched.step()
    with pytest.raises(ValueError, match="1 param groups"):
        BinaryHyperparameterScheduler(BSO([_w()]), ConstantDecay()).load_state_dict(
            {"last_k": 0, "base_thresholds": [1.0, 2.0], "base_one_minus_betas": [0.1, 0.1]}
        )
    with pytest.raises(ValueError, match=r"decay\(0\) must be a finite number >= 0"):
        BinaryHyperparameterScheduler(BSO([_w()]), lambda k: math.nan)
