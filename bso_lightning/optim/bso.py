"""BSO: the Binary Spiking Online optimizer (paper Eq. 11-12)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from bso_lightning.optim import functional
from bso_lightning.optim.base import BinaryOptimizer
from bso_lightning.optim.checks import check_decay, check_threshold, check_time_step


class BSO(BinaryOptimizer):
    """Flip binary weights where momentum agrees with them beyond a threshold.

    Per binary tensor W (values exactly ±1, dense or packed as bits) with momentum M (init 0)::

        M <- beta * M + (1 - beta) * G                       (Eq. 11)
        W <- -W  exactly where  W * M > threshold            (Eq. 12)

    Args:
        params: binary parameters (values exactly ±1, or ``PackedBinaryParameter``) or param-group dicts.
        threshold: γ >= 0; hyper-parameter key ``threshold``.
        beta: momentum decay in [0, 1); key ``beta``.
        reset_momentum_on_flip: set M to 0 where a weight flipped (the authors' code does
            this; the paper does not); key ``reset_momentum_on_flip``.
        fused: run each group's step through ``torch.compile`` (same flips; the first step compiles for
            seconds and needs a C++ compiler on CPU, Triton on CUDA). See :mod:`bso_lightning.optim.functional`.
            ``None`` (default): compiled on CUDA, eager on CPU (:meth:`fused_on`).
        momentum_dtype: ``float32``, ``bfloat16`` or ``int8`` (block-wise; both stored by stochastic rounding,
            seeded by ``rounding_seed``).

    A tensor whose gradient is not finite (NaN/Inf, or squares overflowing float32) is left
    untouched for that step and counted in ``nonfinite_counts()``.
    """

    def __init__(self, params: Iterable[Any], threshold: float = 5e-7, beta: float = 0.999,
                 reset_momentum_on_flip: bool = False, fused: bool | None = None,
                 momentum_dtype: torch.dtype | str = "float32", rounding_seed: int = 0) -> None:
        defaults = dict(threshold=check_threshold(threshold), beta=check_decay(beta, "beta"),
                        reset_momentum_on_flip=bool(reset_momentum_on_flip))
        super().__init__(params, defaults, fused=fused, momentum_dtype=momentum_dtype, rounding_seed=rounding_seed)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_threshold(group["threshold"])
        check_decay(group["beta"], "beta")

    def _update(self, group, params, grads, states, noises, time_step, fused) -> None:
        functional.bso(params, grads, [s["momentum"] for s in states], [s["last_flips"] for s in states],
                       [s["nonfinite_steps"] for s in states], beta=group["beta"], threshold=group["threshold"],
                       reset_momentum_on_flip=group["reset_momentum_on_flip"], rounding_noise=noises,
                       momentum_scales=[s.get("momentum_scale") for s in states], fused=fused)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, time_step: int | None = None) -> Any:
        """One update (Eq. 11-12). ``time_step`` is accepted for symmetry with TBSO and ignored."""
        if time_step is not None:
            check_time_step(time_step)
        return self._step(closure, 0)
