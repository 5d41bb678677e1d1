"""Convex sanity check: noisy least squares with a binary optimum is solved exactly."""

import pytest
import torch

from bso_lightning.optim import BSO, TBSO

OPTIMIZERS = {
    "bso": (lambda p: BSO(p, threshold=0.5, beta=0.999), 1),
    "bso-reset": (lambda p: BSO(p, threshold=0.5, beta=0.999, reset_momentum_on_flip=True), 1),
    "tbso-T2": (lambda p: TBSO(p, threshold=0.15, betas=(0.999, 0.999)), 2),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_recovers_binary_least_squares_optimum(name, seed):
    """f(w) = ||A w - b||^2 / m with b = A w*, w* in {±1}^n, gradient noise std 4.

    A wrong coordinate has a mean gradient of about ±4 in its own direction; the momentum
    (β = 0.999) averages the noise down to ~0.09 std, well under the thresholds used.
    """
    make, time_steps = OPTIMIZERS[name]
    n, m, steps, settle = 32, 64, 3000, 2000
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, n, generator=gen)
    w_star = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    b = a @ w_star
    w = torch.nn.Parameter(torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1)
    assert not torch.equal(w.detach(), w_star)
    opt = make([w])
    for k in range(steps):
        with torch.no_grad():
            w.grad = 2 * a.T @ (a @ w - b) / m + 4.0 * torch.randn(n, generator=gen)
        opt.step(time_step=k % time_steps)
        if k >= settle:  # found by then, and it stays there
            assert torch.equal(w.detach(), w_star), f"step {k}: {(w != w_star).sum().item()} wrong"
