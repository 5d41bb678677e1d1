"""BSO: the Binary Spiking Online optimizer (paper Eq. 11-12)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .fused import bso_update as fused_bso_update
from ._common import (
    BinaryOptimizer,
    check_decay,
    check_threshold,
    check_time_step,
    flip_,
    gradient_norms,
    masked_ema_,
    record_,
)


class BSO(BinaryOptimizer):
    """Flip binary weights where momentum agrees with them beyond a threshold.

    Per binary tensor W (values exactly ±1) with momentum M (fp32, init 0)::

        M <- beta * M + (1 - beta) * G                       (Eq. 11)
        W <- -W  exactly where  W * M > threshold            (Eq. 12)

    Args:
        params: binary parameters (values exactly ±1) or param-group dicts.
        threshold: γ >= 0; hyper-parameter key ``threshold``.
        beta: momentum decay in [0, 1); key ``beta``.
        reset_momentum_on_flip: set M to 0 where a weight flipped (the authors' code does
            this; the paper does not); key ``reset_momentum_on_flip``.
        fused: run each group's step as one ``torch.compile``d function (same results, about
            2x faster; the first step compiles for seconds and needs a C++ compiler on CPU,
            Triton on CUDA). See :mod:`bso_lightning.optim.fused`.

    A tensor whose gradient is not finite (NaN/Inf, or squares overflowing float32) is left
    untouched for that step and counted in ``nonfinite_counts()``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        threshold: float = 5e-7,
        beta: float = 0.999,
        reset_momentum_on_flip: bool = False,
        fused: bool = False,
    ) -> None:
        defaults = dict(
            threshold=check_threshold(threshold),
            beta=check_decay(beta, "beta"),
            reset_momentum_on_flip=bool(reset_momentum_on_flip),
        )
        super().__init__(params, defaults, fused=fused)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_threshold(group["threshold"])
        check_decay(group["beta"], "beta")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, time_step: int | None = None) -> Any:
        """One update (Eq. 11-12). ``time_step`` is accepted for symmetry with TBSO and ignored."""
        if time_step is not None:
            check_time_step(time_step)
        loss = self._evaluate(closure)
        for group, params in self._groups_to_step():
            if self.fused:
                for ps, states in self._by_device(params):
                    fused_bso_update(ps, [s["momentum"] for s in states], [s["last_flips"] for s in states],
                                     [s["nonfinite_steps"] for s in states], group["beta"], group["threshold"],
                                     group["reset_momentum_on_flip"])
                continue
            grads = [p.grad.to(dtype=torch.float32) for p in params]
            for p, g, norm in zip(params, grads, gradient_norms(grads)):
                state, scratch = self.state[p], self._scratch_for(p)
                ok = torch.isfinite(norm)
                masked_ema_(state["momentum"], g, group["beta"], ok, scratch)
                flips = flip_(p, state["momentum"], group["threshold"], ok, scratch,
                              reset_momentum=group["reset_momentum_on_flip"])
                record_(state, flips, ok)
        return loss
