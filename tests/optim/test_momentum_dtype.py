"""A bfloat16 momentum: round-to-nearest stalls the EMA (β = 1 − 1e-3), stochastic rounding does not, runs are
reproducible and resume exactly."""

import copy

import pytest
import torch

from bso_lightning.optim import BSO, TBSO
from bso_lightning.optim.functional import _store_momentum_, stochastic_round_to_bfloat16


def _ema(steps, noise_fn, beta=0.999, grad=1.0):
    m = torch.zeros(256, dtype=torch.bfloat16)
    g = torch.full((256,), grad)
    for _ in range(steps):
        new = m.float().lerp_(g, 1 - beta)
        _store_momentum_(m, new, noise_fn())
    return m.float()


def test_round_to_nearest_stalls_and_stochastic_rounding_does_not():
    steps = 6000  # exact EMA: 1 − 0.999**6000 = 0.9975
    exact = 1 - 0.999 ** steps
    stalled = _ema(steps, lambda: None)
    gen = torch.Generator().manual_seed(0)
    rounded = _ema(steps, lambda: torch.randint(0, 1 << 16, (256,), dtype=torch.int32, generator=gen))
    assert stalled.max() < 0.6 * exact  # round to nearest: (1 − β)·(G − M) falls below half a bf16 step early on
    assert abs(rounded.mean().item() - exact) < 0.01


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    x = torch.full((20000,), 1.0 + 2 ** -9)  # between the bf16 neighbours 1 and 1 + 2**-7, a quarter of the way
    noise = torch.randint(0, 1 << 16, (20000,), dtype=torch.int32, generator=torch.Generator().manual_seed(1))
    out = stochastic_round_to_bfloat16(x.clone(), noise).float()
    assert set(out.unique().tolist()) == {1.0, 1.0 + 2 ** -7}
    assert abs(out.mean().item() - (1.0 + 2 ** -9)) < 2e-4


@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_bfloat16_momentum_tracks_the_gradient_mean_and_resumes_exactly(cls):
    def make():
        w = torch.nn.Parameter(torch.ones(64, 8))
        return w, cls([w], threshold=1e9, momentum_dtype="bfloat16", rounding_seed=5)  # γ huge: no flips

    gen = torch.Generator().manual_seed(2)
    grads = [0.3 + 0.01 * torch.randn(64, 8, generator=gen) for _ in range(3000)]
    w, opt = make()
    saved = None
    for k, g in enumerate(grads):
        w.grad = g
        opt.step(time_step=0)
        if k == 1499:
            saved = copy.deepcopy(opt.state_dict())  # (state_dict holds the live tensors)
    m = opt.state[w]["momentum"]
    assert m.dtype == torch.bfloat16
    assert abs(m.float().mean().item() - 0.3 * (1 - 0.999 ** 3000)) < 0.01
    w2, opt2 = make()
    w2.grad = grads[0]
    opt2.step(time_step=0)
    opt2.load_state_dict(saved)
    for g in grads[1500:]:
        w2.grad = g
        opt2.step(time_step=0)
    assert torch.equal(opt2.state[w2]["momentum"], m)


def test_float32_state_loads_into_a_bfloat16_optimizer_and_back():
    w = torch.nn.Parameter(torch.ones(5))
    fp32 = BSO([w])
    w.grad = torch.full((5,), 0.5)
    fp32.step()
    bf16 = BSO([w], momentum_dtype=torch.bfloat16)
    bf16.load_state_dict(fp32.state_dict())
    assert bf16.state[w]["momentum"].dtype == torch.bfloat16
    assert torch.equal(bf16.state[w]["momentum"], fp32.state[w]["momentum"].to(torch.bfloat16))
    with pytest.raises(ValueError, match="momentum_dtype must be one of"):
        BSO([w], momentum_dtype="float16")
