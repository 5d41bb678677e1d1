"""Property tests: under any finite gradients and valid hyper-parameters the weights stay
exactly ±1, flips happen exactly where the rule says, and the flip count is exact."""

import numpy as np
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bso_lightning.optim import BSO, TBSO

# Finite float32 values, with zeros, subnormals and values near float32's limits well represented.
finite = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, -0.0, 1e-45, -1e-45, 1e-30, 3.4e38, -3.4e38, 1e20, -1e20]),
)
decay = st.floats(0.0, 1.0, exclude_max=True)
threshold = st.one_of(st.just(0.0), st.floats(0.0, 1e6), st.floats(1e-12, 1e-3))


@st.composite
def problem(draw):
    n = draw(st.integers(1, 12))
    signs = draw(hnp.arrays(np.float32, n, elements=st.sampled_from([-1.0, 1.0])))
    grads = draw(st.lists(hnp.arrays(np.float32, n, elements=finite), min_size=1, max_size=6))
    return torch.from_numpy(signs), [torch.from_numpy(g) for g in grads]


def _assert_binary(w):
    assert torch.all((w == 1) | (w == -1)), w


# Huge but finite gradients (issue 13): |G|² overflows float32, so the step is skipped and counted; before the fix
# the momentum overflowed to inf/NaN, the tensor never flipped again and nothing was counted. (Two such steps and an
# ordinary one after them: test_binary_optimizers.py::test_a_nonfinite_gradient_skips_only_that_tensor.)
HUGE = (torch.tensor([1.0, -1.0]), [torch.tensor([3.4e38, -3.4e38]), torch.tensor([-3.4e38, 3.4e38])])


@settings(max_examples=150, deadline=None)
@given(problem(), threshold, decay, st.booleans())
@example(HUGE, 0.0, 0.5, False)
def test_bso_weights_stay_binary_and_flip_exactly_by_rule(data, gamma, beta, reset):
    signs, grads = data
    w = torch.nn.Parameter(signs.clone())
    opt = BSO([w], threshold=gamma, beta=beta, reset_momentum_on_flip=reset)
    for grad in grads:
        before = w.detach().clone()
        skipped_before = opt.nonfinite_counts().item()
        w.grad = grad.clone()
        opt.step()
        _assert_binary(w)
        changed = w != before
        assert opt.flip_counts().tolist() == [int(changed.sum())]
        momentum = opt.state[w]["momentum"]
        assert torch.isfinite(momentum).all()
        if opt.nonfinite_counts().item() != skipped_before:
            assert not changed.any()
        elif reset:
            assert torch.all(momentum[changed] == 0)
        else:
            assert torch.equal(changed, before * momentum > gamma)


@settings(max_examples=150, deadline=None)
@given(problem(), threshold, decay, decay, st.floats(1e-30, 1.0), st.integers(0, 5))
@example(HUGE, 0.0, 0.5, 0.5, 1e-10, 0)
def test_tbso_weights_stay_binary_and_flip_exactly_by_rule(data, gamma, beta1, beta2, eps, max_t):
    signs, grads = data
    w = torch.nn.Parameter(signs.clone())
    opt = TBSO([w], threshold=gamma, betas=(beta1, beta2), eps=eps)
    for k, grad in enumerate(grads):
        t = k % (max_t + 1)
        before = w.detach().clone()
        skipped_before = opt.nonfinite_counts().item()
        w.grad = grad.clone()
        opt.step(time_step=t)
        _assert_binary(w)
        changed = w != before
        assert opt.flip_counts().tolist() == [int(changed.sum())]
        state = opt.state[w]
        assert torch.isfinite(state["momentum"]).all() and torch.isfinite(state["v"]).all()
        assert state["v"].shape[0] >= t + 1
        if opt.nonfinite_counts().item() == skipped_before:
            assert torch.equal(changed, before * state["momentum"] > opt.flip_thresholds(t)[0])
        else:
            assert not changed.any()
