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


# ----------------------------------------------------------------- decays relative to the run

from bso_lightning.optim.schedules import (  # noqa: E402
    RUN_DECAYS,
    ExponentialDecay,
    RunFractionStepDecay,
    run_decay,
    run_inverse_sqrt_decay,
)


def test_run_fraction_step_is_the_authors_schedule_at_any_length():
    # the authors: x0.1 every 50 of 400 epochs -> fraction 0.125; the same shape over 800 batches
    authors = StepDecay(every=50)
    for total, scale in ((400, 1), (800, 2)):
        run = RunFractionStepDecay(total, fraction=0.125)
        for epoch in (0, 49, 50, 99, 100, 250, 399):
            assert run(round(epoch * scale)) == pytest.approx(authors(epoch)), (total, epoch)
    assert RunFractionStepDecay(400)(400) == pytest.approx(1e-8)  # the end of the run (k = total)
    assert RunFractionStepDecay(400)(10_000) == pytest.approx(1e-8)  # held after the run
    assert RunFractionStepDecay(10, fraction=0.5, factor=0.5)(5) == 0.5


def test_exponential_decay_is_log_linear_to_final():
    decay = ExponentialDecay(100, final=1e-4)
    assert decay(0) == 1.0
    assert decay(50) == pytest.approx(1e-2)
    assert decay(100) == pytest.approx(1e-4)
    assert decay(1000) == pytest.approx(1e-4)
    values = [decay(k) for k in range(101)]
    assert all(b < a for a, b in zip(values, values[1:]))


def test_run_inverse_sqrt_reaches_final_at_the_end():
    decay = run_inverse_sqrt_decay(1000, final=1e-2)
    assert decay(0) == 1.0 and decay(1000) == pytest.approx(1e-2)
    assert decay(250) == pytest.approx(1 / math.sqrt(1 + 250 * (1e4 - 1) / 1000))
    assert run_inverse_sqrt_decay(10, final=1.0)(10) == 1.0


def test_run_decay_factory_and_its_errors():
    assert isinstance(run_decay("run_exp", 10, final=0.5), ExponentialDecay)
    assert isinstance(run_decay("run_step", 10), RunFractionStepDecay)
    assert run_decay("run_inv_sqrt", 10, final=0.1)(10) == pytest.approx(0.1)
    assert set(RUN_DECAYS) == {"run_step", "run_exp", "run_inv_sqrt"}
    with pytest.raises(ValueError, match=r"shape must be one of .*got 'cosine'"):
        run_decay("cosine", 10)
    with pytest.raises(ValueError, match=r"total .* must be an int >= 1, got 0"):
        ExponentialDecay(0)
    with pytest.raises(ValueError, match=r"final .* must be in \(0, 1\], got 0"):
        ExponentialDecay(10, final=0)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 1.5"):
        RunFractionStepDecay(10, fraction=1.5)
    with pytest.raises(ValueError, match=r"k must be an int >= 0"):
        ExponentialDecay(10)(-1)


def test_scheduler_drives_tbso_beta1_to_final_over_the_run():
    opt = TBSO([_w()], threshold=5e-7, betas=(0.999, 0.99999))
    sched = BinaryHyperparameterScheduler(opt, ExponentialDecay(20, final=1e-3))
    for _ in range(20):
        sched.step()
    beta1, beta2 = opt.param_groups[0]["betas"]
    assert 1 - beta1 == pytest.approx(1e-6) and beta2 == 0.99999
    assert opt.param_groups[0]["threshold"] == pytest.approx(5e-10)
