"""BSO (Eq. 11-12) on hand-computed gradient sequences: the flips, ties at the threshold, the momentum reset, the
ignored time step. What BSO shares with T-BSO (state, checkpoints, skips, groups, argument checks) is tested over
both in test_binary_optimizers.py."""

import pytest
import torch

from bso_lightning.optim import BSO


def _param(values, dtype=torch.float32):
    return torch.nn.Parameter(torch.tensor(values, dtype=dtype))


def _step(opt, p, grad, **kwargs):
    p.grad = torch.tensor(grad, dtype=p.dtype)
    opt.step(**kwargs)


# beta = 0.5, threshold = 0.25: every value below is exact in float32.
GRADS = [[1.0, 0.5, -1.0, 1.0, -0.5], [0.0, 0.25, 1.0, 2.0, 0.0], [-2.0, 1.0, 0.0, -2.0, 1.0]]


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_hand_computed_sequence(fused):
    w = _param([1.0, 1.0, -1.0, -1.0, 1.0])
    opt = BSO([w], threshold=0.25, beta=0.5, fused=fused)

    _step(opt, w, GRADS[0])
    # M = [0.5, 0.25, -0.5, 0.5, -0.25]; W*M = [0.5, 0.25 (= threshold: no flip), 0.5, -0.5, -0.25]
    assert opt.state[w]["momentum"].tolist() == [0.5, 0.25, -0.5, 0.5, -0.25]
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0]
    assert opt.flip_counts().tolist() == [2]

    _step(opt, w, GRADS[1])
    # M = [0.25, 0.25, 0.25, 1.25, -0.125]; W*M = [-0.25, 0.25, 0.25, -1.25, -0.125]: two entries at threshold
    assert opt.state[w]["momentum"].tolist() == [0.25, 0.25, 0.25, 1.25, -0.125]
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0]
    assert opt.flip_counts().tolist() == [0]

    _step(opt, w, GRADS[2])
    # M = [-0.875, 0.625, 0.125, -0.375, 0.4375]; W*M = [0.875, 0.625, 0.125, 0.375, 0.4375]
    assert opt.state[w]["momentum"].tolist() == [-0.875, 0.625, 0.125, -0.375, 0.4375]
    assert w.tolist() == [1.0, -1.0, 1.0, 1.0, -1.0]
    assert opt.flip_counts().tolist() == [4]


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_reset_momentum_on_flip(fused):
    w = _param([1.0, 1.0, -1.0, -1.0, 1.0])
    opt = BSO([w], threshold=0.25, beta=0.5, reset_momentum_on_flip=True, fused=fused)

    _step(opt, w, GRADS[0])  # flips entries 0 and 2 -> their momentum is reset
    assert opt.state[w]["momentum"].tolist() == [0.0, 0.25, 0.0, 0.5, -0.25]
    assert w.tolist() == [-1.0, 1.0, 1.0, -1.0, 1.0]

    _step(opt, w, GRADS[1])
    # M = [0, 0.25, 0.5, 1.25, -0.125]; W*M = [0, 0.25 (at threshold), 0.5, -1.25, -0.125] -> flips 2 (reset)
    assert opt.state[w]["momentum"].tolist() == [0.0, 0.25, 0.0, 1.25, -0.125]
    assert w.tolist() == [-1.0, 1.0, -1.0, -1.0, 1.0]
    assert opt.flip_counts().tolist() == [1]


def test_time_step_is_accepted_and_ignored():
    a, b = _param([1.0, -1.0]), _param([1.0, -1.0])
    opt_a, opt_b = BSO([a], threshold=0.1, beta=0.5), BSO([b], threshold=0.1, beta=0.5)
    for t, grad in enumerate([[1.0, 1.0], [-1.0, 0.5], [0.3, -2.0]]):
        _step(opt_a, a, grad)
        _step(opt_b, b, grad, time_step=t)
    assert torch.equal(a, b)
    assert torch.equal(opt_a.state[a]["momentum"], opt_b.state[b]["momentum"])
