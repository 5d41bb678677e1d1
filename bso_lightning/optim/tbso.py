"""T-BSO: BSO with a time-aware adaptive threshold (paper Eq. 13-14)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from .fused import tbso_update as fused_tbso_update
from ._common import (
    BinaryOptimizer,
    check_betas,
    check_eps,
    check_threshold,
    check_time_step,
    flip_,
    masked_ema_,
    record_,
)


class TBSO(BinaryOptimizer):
    """Flip binary weights against a threshold scaled by a per-time-step gradient scale.

    Per binary tensor W with momentum M (fp32, size of W) and v (fp32, one scalar per time step)::

        M    <- beta1 * M    + (1 - beta1) * G                           (Eq. 13)
        v[t] <- beta2 * v[t] + (1 - beta2) * mean(G ** 2)                (Eq. 13)
        W    <- -W  exactly where  W * M > threshold * sqrt(v[t] + eps)  (Eq. 14)

    No bias correction. ``v`` grows with zeros when a later call uses a larger ``t``
    (e.g. pre-train with T = 1, fine-tune with T = 6).

    Args:
        params: binary parameters (values exactly ±1) or param-group dicts.
        threshold: γ >= 0; hyper-parameter key ``threshold``.
        betas: (β1, β2), each in [0, 1); key ``betas``.
        eps: ε > 0; key ``eps``.
        fused: run each group's step as one ``torch.compile``d function (as in :class:`BSO`).

    A tensor whose updated M or v[t] is not finite (NaN/Inf gradient, or mean(G²)
    overflowing float32) is left untouched for that step and counted in ``nonfinite_counts()``.
    """

    _state_keys = BinaryOptimizer._state_keys | {"v"}

    def __init__(
        self,
        params: Iterable[Any],
        threshold: float = 5e-7,
        betas: tuple[float, float] = (0.999, 0.99999),
        eps: float = 1e-10,
        fused: bool = False,
    ) -> None:
        defaults = dict(threshold=check_threshold(threshold), betas=check_betas(betas), eps=check_eps(eps))
        super().__init__(params, defaults, fused=fused)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_threshold(group["threshold"])
        check_betas(group["betas"])
        check_eps(group["eps"])

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(p, state)
        if "v" not in state:
            state["v"] = torch.zeros(0, dtype=torch.float32, device=p.device)

    @staticmethod
    def _v_with_length(state: dict[str, Any], length: int) -> Tensor:
        """``state['v']``, grown with zeros to at least ``length`` entries."""
        v = state["v"]
        if v.numel() < length:
            grown = v.new_zeros(length)
            grown[: v.numel()] = v
            state["v"] = v = grown
        return v

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, time_step: int = 0) -> Any:
        """One update (Eq. 13-14) for time step ``time_step`` (an int >= 0)."""
        t = check_time_step(time_step)
        loss = self._evaluate(closure)
        for group, params in self._groups_to_step():
            if self.fused:
                for ps, states in self._by_device(params):
                    fused_tbso_update(ps, [s["momentum"] for s in states],
                                      [self._v_with_length(s, t + 1) for s in states], t,
                                      [s["last_flips"] for s in states], [s["nonfinite_steps"] for s in states],
                                      group["betas"], group["threshold"], group["eps"])
                continue
            beta1, beta2 = group["betas"]
            grads = [p.grad.to(dtype=torch.float32) for p in params]
            for p, g in zip(params, grads):
                state, scratch = self.state[p], self._scratch_for(p)
                v_t = self._v_with_length(state, t + 1)[t]
                flat = g.reshape(-1)
                new_v_t = v_t * beta2 + torch.dot(flat, flat) * ((1.0 - beta2) / g.numel())  # mean(G²), one pass
                ok = torch.isfinite(new_v_t)  # false exactly when G holds NaN/Inf or ‖G‖² overflows
                masked_ema_(state["momentum"], g, beta1, ok, scratch)
                v_t.copy_(torch.where(ok, new_v_t, v_t))
                threshold = group["threshold"] * torch.sqrt(v_t + group["eps"])
                record_(state, flip_(p, state["momentum"], threshold, ok, scratch), ok)
        return loss

    def flip_thresholds(self, time_step: int) -> Tensor:
        """float32 [n_params]: the current γ·sqrt(v[t] + ε) of each tensor (v[t] = 0 if unseen)."""
        t = check_time_step(time_step)
        device = self.binary_parameters()[0].device
        values = []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                v = state["v"] if state and "v" in state else None
                v_t = v[t] if v is not None and t < v.numel() else torch.zeros((), device=p.device)
                values.append((group["threshold"] * torch.sqrt(v_t + group["eps"])).to(device))
        return torch.stack(values)
