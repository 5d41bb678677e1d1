"""BSO: the Binary Spiking Online optimizer (paper Eq. 11-12)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._common import (
    BinaryOptimizer,
    check_decay,
    check_threshold,
    check_time_step,
    commit_,
    ema_candidates,
    flip_where_,
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

    A tensor whose updated momentum is not finite (NaN/Inf gradient) is left untouched for
    that step and counted in ``nonfinite_counts()``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        threshold: float = 5e-7,
        beta: float = 0.999,
        reset_momentum_on_flip: bool = False,
    ) -> None:
        defaults = dict(
            threshold=check_threshold(threshold),
            beta=check_decay(beta, "beta"),
            reset_momentum_on_flip=bool(reset_momentum_on_flip),
        )
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_threshold(group["threshold"])
        check_decay(group["beta"], "beta")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, time_step: int | None = None) -> Any:
        """One update (Eq. 11-12). ``time_step`` is accepted for symmetry with TBSO and ignored."""
        if time_step is not None:
            check_time_step(time_step)
        loss = self._evaluate(closure)
        for group in self.param_groups:
            self._check_group(group)
            params = self._params_with_grad(group)
            if not params:
                continue
            momenta = [self.state[p]["momentum"] for p in params]
            grads = [p.grad.to(dtype=torch.float32) for p in params]
            candidates = ema_candidates(momenta, grads, group["beta"])
            for p, m, new_m in zip(params, momenta, candidates):
                ok = torch.isfinite(new_m).all()
                commit_(m, new_m, ok)
                mask = flip_where_(p, m, group["threshold"], ok)
                if group["reset_momentum_on_flip"]:
                    m.masked_fill_(mask, 0.0)
                record_(self.state[p], mask, ok)
        return loss
