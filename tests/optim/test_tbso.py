"""T-BSO (Eq. 13-14) on hand-computed gradient sequences, per-time-step v, flip thresholds, a BSO checkpoint
continued, and the checks of T-BSO's own arguments (betas, eps, time steps). What T-BSO shares with BSO (state,
checkpoints, skips, groups, the shared argument checks) is tested over both in test_binary_optimizers.py."""

import math

import pytest
import torch

from bso_lightning.optim import TBSO


def _param(values, dtype=torch.float32):
    return torch.nn.Parameter(torch.tensor(values, dtype=dtype))


def _step(opt, p, grad, t):
    p.grad = torch.tensor(grad, dtype=p.dtype)
    opt.step(time_step=t)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_hand_computed_sequence_with_per_time_step_v(fused):
    # beta1 = beta2 = 0.5, threshold = 0.5, eps = 0.25: sqrt(v + eps) is exact below.
    w = _param([1.0, -1.0, 1.0, -1.0])
    opt = TBSO([w], threshold=0.5, betas=(0.5, 0.5), eps=0.25, fused=fused)
    assert w not in opt.state

    _step(opt, w, [1.0, -2.0, 3.0, -4.0], t=0)
    # M = [0.5, -1, 1.5, -2]; mean(G^2) = 7.5 -> v[0] = 3.75; threshold = 0.5 * sqrt(4) = 1
    # W*M = [0.5, 1 (= threshold: no flip), 1.5, 2]
    state = opt.state[w]
    assert state["momentum"].tolist() == [0.5, -1.0, 1.5, -2.0]
    assert state["v"].tolist() == [3.75]
    assert opt.flip_thresholds(0).tolist() == [1.0]
    assert w.tolist() == [1.0, -1.0, -1.0, 1.0]
    assert opt.flip_counts().tolist() == [2]

    _step(opt, w, [1.0, 1.0, 0.5, 0.5], t=1)
    # M = [0.75, 0, 1, -0.75]; mean(G^2) = 0.625 -> v[1] = 0.3125; threshold = 0.5 * sqrt(0.5625) = 0.375
    # W*M = [0.75, 0, -1, -0.75] -> entry 0 flips. (Had v[0] been used: threshold ~0.78, no flip.)
    assert state["momentum"].tolist() == [0.75, 0.0, 1.0, -0.75]
    assert state["v"].tolist() == [3.75, 0.3125]
    assert opt.flip_thresholds(1).tolist() == [0.375]
    assert w.tolist() == [-1.0, -1.0, -1.0, 1.0]
    assert opt.flip_counts().tolist() == [1]

    _step(opt, w, [0.0, 0.0, 0.0, 0.0], t=0)
    # only v[0] decays: v = [1.875, 0.3125]; M = [0.375, 0, 0.5, -0.375]; W*M <= 0: no flips
    assert state["momentum"].tolist() == [0.375, 0.0, 0.5, -0.375]
    assert state["v"].tolist() == [1.875, 0.3125]
    assert opt.flip_thresholds(0).tolist() == [pytest.approx(0.5 * math.sqrt(2.125))]
    assert w.tolist() == [-1.0, -1.0, -1.0, 1.0]
    assert opt.flip_counts().tolist() == [0]


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_v_is_one_float32_scalar_per_time_step_and_grows(fused):
    w = _param([1.0, -1.0, 1.0])
    opt = TBSO([w], threshold=0.1, betas=(0.5, 0.5), fused=fused)
    for _ in range(3):  # "pre-train" with T = 1
        _step(opt, w, [1.0, 1.0, 1.0], t=0)
    v = opt.state[w]["v"]
    assert v.shape == (1,) and v.dtype == torch.float32
    for t in range(6):  # "fine-tune" with T = 6: v grows with zeros, nothing crashes
        _step(opt, w, [2.0, 2.0, 2.0], t=t)
    v = opt.state[w]["v"]
    assert v.shape == (6,)
    assert v.tolist() == [pytest.approx(0.5 * 0.875 + 2.0)] + [2.0] * 5



@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("placement, flips", [("inside", False), ("outside", True)])
def test_eps_inside_or_outside_the_square_root(placement, flips, fused):
    """γ = 1, β1 = β2 = 0.5, ε = 0.25; G = [1.125, 0, ...] over 8 entries: M[0] = 0.5625, mean(G²) = 0.158203125,
    v[0] = 0.0791015625 = 0.28125². Inside (the paper): sqrt(v + ε) = 0.5737 > M[0], no flip; outside (the
    authors' code): sqrt(v) + ε = 0.53125 < M[0], flip."""
    w = _param([1.0, -1.0] * 4)
    opt = TBSO([w], threshold=1.0, betas=(0.5, 0.5), eps=0.25, eps_placement=placement, fused=fused)
    _step(opt, w, [1.125] + [0.0] * 7, t=0)
    assert opt.state[w]["v"].tolist() == [0.0791015625]
    expected = 0.53125 if placement == "outside" else pytest.approx(math.sqrt(0.3291015625))
    assert opt.flip_thresholds(0).tolist() == [expected]
    assert w.tolist() == [-1.0 if flips else 1.0] + [-1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
    assert opt.flip_counts().tolist() == [int(flips)]

def test_flip_thresholds_for_unseen_time_steps_and_params():
    a, b = _param([1.0]), _param([1.0])
    opt = TBSO([a, b], threshold=2.0, eps=0.25)
    assert opt.flip_thresholds(3).tolist() == [1.0, 1.0]  # v[t] = 0: 2 * sqrt(0.25)
    a.grad = torch.tensor([1.0])
    opt.step(time_step=0)
    assert opt.flip_thresholds(0)[1].item() == 1.0
    assert opt.flip_thresholds(0)[0].item() > 1.0
    assert opt.flip_thresholds(5).tolist() == [1.0, 1.0]


def test_bso_checkpoint_continues_in_tbso():
    """E.g. pre-train with BSO, fine-tune with T-BSO: momentum carries over, v starts at zero."""
    from bso_lightning.optim import BSO

    w = _param([1.0, -1.0])
    bso = BSO([w], threshold=10.0, beta=0.5)
    w.grad = torch.tensor([1.0, 1.0])
    bso.step()
    tbso = TBSO([w], threshold=10.0, betas=(0.5, 0.5))
    state = bso.state_dict()
    state["param_groups"] = tbso.state_dict()["param_groups"]
    tbso.load_state_dict(state)
    _step(tbso, w, [1.0, 1.0], t=2)
    assert tbso.state[w]["momentum"].tolist() == [0.75, 0.75]
    assert tbso.state[w]["v"].tolist() == [0.0, 0.0, 0.5]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(betas=(0.5, 1.5)), r"betas\[1\] must be in \[0, 1\)"),
        (dict(betas=(0.5,)), r"betas must be a pair"),
        (dict(eps=0.0), r"eps must be a finite number > 0, got 0\.0"),
        (dict(eps=-1.0), r"eps must be a finite number > 0"),
        (dict(eps_placement="middle"), r"eps_placement must be one of \('inside', 'outside'\), got 'middle'"),
    ],
)
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TBSO([_param([1.0, 1.0, 1.0])], **kwargs)


def test_eps_set_in_param_groups_is_checked_at_step():
    w = _param([1.0, 1.0])
    w.grad = torch.ones(2)
    opt = TBSO([w])
    opt.param_groups[0]["eps"] = 0.0
    with pytest.raises(ValueError, match="eps must be"):
        opt.step(time_step=0)


@pytest.mark.parametrize("time_step", [-1, 1.0, "0", True])
def test_flip_thresholds_refuse_a_bad_time_step(time_step):
    with pytest.raises(ValueError, match="time_step must be an int >= 0"):
        TBSO([_param([1.0, 1.0])]).flip_thresholds(time_step)
