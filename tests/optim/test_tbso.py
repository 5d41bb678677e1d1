"""T-BSO (Eq. 13-14) on hand-computed gradient sequences, per-time-step v, state and accounting."""

import io
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


def test_flip_thresholds_for_unseen_time_steps_and_params():
    a, b = _param([1.0]), _param([1.0])
    opt = TBSO([a, b], threshold=2.0, eps=0.25)
    assert opt.flip_thresholds(3).tolist() == [1.0, 1.0]  # v[t] = 0: 2 * sqrt(0.25)
    a.grad = torch.tensor([1.0])
    opt.step(time_step=0)
    assert opt.flip_thresholds(0)[1].item() == 1.0
    assert opt.flip_thresholds(0)[0].item() > 1.0
    assert opt.flip_thresholds(5).tolist() == [1.0, 1.0]


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_nonfinite_gradient_skips_only_that_tensor(fused):
    good, bad = _param([1.0, -1.0]), _param([1.0, -1.0])
    opt = TBSO([good, bad], threshold=0.1, betas=(0.5, 0.5), fused=fused)
    good.grad, bad.grad = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])
    opt.step(time_step=0)
    momentum_before = opt.state[bad]["momentum"].clone()
    v_before = opt.state[bad]["v"].clone()
    weight_before = bad.detach().clone()

    good.grad, bad.grad = torch.tensor([1.0, 1.0]), torch.tensor([float("inf"), 1.0])
    opt.step(time_step=0)
    assert torch.equal(bad, weight_before)
    assert torch.equal(opt.state[bad]["momentum"], momentum_before)
    assert torch.equal(opt.state[bad]["v"], v_before)
    assert torch.isfinite(opt.state[bad]["v"]).all()
    assert opt.nonfinite_counts().tolist() == [0, 1]
    assert opt.state[good]["momentum"].tolist() == [0.75, 0.75]  # 0.5 * 0.5 + 0.5 * 1
    assert opt.state[good]["v"].tolist() == [0.75]


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_overflowing_mean_square_is_skipped_not_stored(fused):
    w = _param([1.0, -1.0])
    opt = TBSO([w], threshold=0.0, fused=fused)
    w.grad = torch.tensor([3e38, -3e38])  # finite, but G^2 overflows float32
    opt.step(time_step=0)
    assert torch.isfinite(opt.state[w]["v"]).all()
    assert opt.nonfinite_counts().tolist() == [1]
    assert w.tolist() == [1.0, -1.0]


@pytest.mark.parametrize("serialize", [False, True])
def test_state_dict_round_trip_with_grown_v(serialize):
    gen = torch.Generator().manual_seed(1)
    w = torch.nn.Parameter(torch.randint(0, 2, (3, 7), generator=gen, dtype=torch.float32) * 2 - 1)
    opt = TBSO([w], threshold=0.5, betas=(0.9, 0.99))
    for _ in range(4):  # T = 1 phase: v has one entry in the checkpoint
        w.grad = torch.randn(3, 7, generator=gen)
        opt.step(time_step=0)

    state = opt.state_dict()
    if serialize:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = TBSO([w2])
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["betas"] == (0.9, 0.99)
    assert opt2.state[w2]["v"].shape == (1,)

    for step in range(12):  # T = 4 afterwards: v grows in both
        grad = torch.randn(3, 7, generator=gen)
        w.grad, w2.grad = grad.clone(), grad.clone()
        opt.step(time_step=step % 4)
        opt2.step(time_step=step % 4)
        assert torch.equal(w, w2)
        for key in ("momentum", "v", "last_flips", "nonfinite_steps"):
            assert torch.equal(opt.state[w][key], opt2.state[w2][key]), key
    assert opt2.state[w2]["v"].shape == (4,)
    assert torch.equal(opt.flip_thresholds(2), opt2.flip_thresholds(2))


def test_low_precision_weights_round_trip_keeps_state_dtypes():
    w = _param([1.0, -1.0, 1.0], dtype=torch.float16)
    opt = TBSO([w], threshold=0.0, betas=(0.5, 0.5))
    _step(opt, w, [1 / 3, -1 / 3, -1.0], t=2)
    assert opt.state[w]["momentum"].dtype == torch.float32
    w2 = _param(w.tolist(), dtype=torch.float16)
    opt2 = TBSO([w2])
    opt2.load_state_dict(opt.state_dict())
    for key, value in opt.state[w].items():
        assert opt2.state[w2][key].dtype == value.dtype and torch.equal(opt2.state[w2][key], value)


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
