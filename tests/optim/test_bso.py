"""BSO (Eq. 11-12) on hand-computed gradient sequences, plus state and accounting."""

import io

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


def test_param_groups_have_their_own_hyperparameters():
    a, b = _param([1.0, 1.0]), _param([1.0, 1.0])
    opt = BSO([{"params": [a]}, {"params": [b], "threshold": 10.0}], threshold=0.1, beta=0.5)
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert a.tolist() == [-1.0, -1.0] and b.tolist() == [1.0, 1.0]
    assert opt.flip_counts().tolist() == [2, 0]
    # schedules change hyper-parameters through param_groups
    opt.param_groups[1]["threshold"] = 0.0
    opt.step()
    assert b.tolist() == [-1.0, -1.0]


def test_closure_loss_is_returned_and_evaluated_with_grad():
    w = _param([1.0, -1.0])
    opt = BSO([w], threshold=0.0, beta=0.0)

    def closure():
        opt.zero_grad()
        loss = (w * torch.tensor([1.0, 1.0])).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 0.0
    assert w.tolist() == [-1.0, -1.0]  # G = [1, 1], beta = 0: W*M = [1, -1]


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_nonfinite_gradient_skips_only_that_tensor(fused):
    good, bad = _param([1.0, -1.0, 1.0]), _param([1.0, -1.0, 1.0])
    opt = BSO([good, bad], threshold=0.1, beta=0.5, fused=fused)
    good.grad, bad.grad = torch.tensor([1.0, 1.0, 0.0]), torch.tensor([1.0, 1.0, 1.0])
    opt.step()
    momentum_before = opt.state[bad]["momentum"].clone()
    weight_before = bad.detach().clone()

    good.grad = torch.tensor([1.0, 1.0, 0.0])
    bad.grad = torch.tensor([float("nan"), 1e9, float("inf")])
    opt.step()

    assert torch.equal(bad, weight_before)
    assert torch.equal(opt.state[bad]["momentum"], momentum_before)
    assert torch.isfinite(opt.state[bad]["momentum"]).all()
    assert opt.nonfinite_counts().tolist() == [0, 1]
    assert opt.flip_counts().tolist()[1] == 0
    # the finite tensor updated normally: M = 0.5*[0.5, 0.5, 0] + 0.5*[1, 1, 0]
    assert opt.state[good]["momentum"].tolist() == [0.75, 0.75, 0.0]


def test_params_without_grad_are_skipped_and_not_counted():
    a, b = _param([1.0, 1.0]), _param([1.0, 1.0])
    opt = BSO([a, b], threshold=0.1, beta=0.5)
    assert opt.flip_counts().tolist() == [0, 0]  # never stepped
    a.grad, b.grad = torch.ones(2), torch.ones(2)
    opt.step()
    assert opt.flip_counts().tolist() == [2, 2]
    b.grad = None
    opt.step()
    assert b.tolist() == [-1.0, -1.0]
    assert opt.flip_counts().tolist() == [0, 0]  # b did not move at this step
    assert opt.nonfinite_counts().tolist() == [0, 0]
    assert opt.flip_counts().dtype == opt.nonfinite_counts().dtype == torch.int64


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_low_precision_weights_keep_fp32_momentum(fused):
    w = _param([1.0, -1.0, 1.0], dtype=torch.bfloat16)
    opt = BSO([w], threshold=0.0, beta=0.5, fused=fused)
    _step(opt, w, [1 / 3, -1 / 3, -1.0])
    assert opt.state[w]["momentum"].dtype == torch.float32
    assert w.dtype == torch.bfloat16 and w.tolist() == [-1.0, 1.0, 1.0]

    # checkpoint: the base class would cast state to bf16; ours keeps fp32 / int64 exactly
    state = opt.state_dict()
    w2 = _param(w.tolist(), dtype=torch.bfloat16)
    opt2 = BSO([w2])
    opt2.load_state_dict(state)
    s1, s2 = opt.state[w], opt2.state[w2]
    assert s2["momentum"].dtype == torch.float32 and torch.equal(s1["momentum"], s2["momentum"])
    assert s2["last_flips"].dtype == s2["nonfinite_steps"].dtype == torch.int64


@pytest.mark.parametrize("serialize", [False, True])
def test_state_dict_round_trip(serialize):
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randint(0, 2, (4, 5), generator=gen).float() * 2 - 1)
    opt = BSO([w], threshold=0.05, beta=0.8, reset_momentum_on_flip=True)
    for _ in range(3):
        w.grad = torch.randn(4, 5, generator=gen)
        opt.step()

    state = opt.state_dict()
    if serialize:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
    w2 = torch.nn.Parameter(w.detach().clone())
    opt2 = BSO([w2])  # hyper-parameters come from the state dict
    opt2.load_state_dict(state)
    assert opt2.param_groups[0]["threshold"] == 0.05 and opt2.param_groups[0]["beta"] == 0.8

    for _ in range(5):
        grad = torch.randn(4, 5, generator=gen)
        w.grad, w2.grad = grad.clone(), grad.clone()
        opt.step()
        opt2.step()
        assert torch.equal(w, w2)
        assert torch.equal(opt.state[w]["momentum"], opt2.state[w2]["momentum"])
        assert torch.equal(opt.flip_counts(), opt2.flip_counts())


def test_mixed_dtypes_in_one_group_match_separate_optimizers():
    gen = torch.Generator().manual_seed(3)
    shapes_dtypes = [((6,), torch.float32), ((2, 3), torch.bfloat16), ((4,), torch.float16)]
    joint = [torch.nn.Parameter((torch.randint(0, 2, s, generator=gen) * 2 - 1).to(d)) for s, d in shapes_dtypes]
    alone = [torch.nn.Parameter(p.detach().clone()) for p in joint]
    opt = BSO(joint, threshold=0.1, beta=0.7)
    singles = [BSO([p], threshold=0.1, beta=0.7) for p in alone]
    for _ in range(4):
        for p, q in zip(joint, alone):
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype)
            q.grad = p.grad.clone()
        opt.step()
        for single in singles:
            single.step()
    for p, q, single in zip(joint, alone, singles):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["momentum"], single.state[q]["momentum"])
