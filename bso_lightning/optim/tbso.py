"""T-BSO: BSO with a time-aware adaptive threshold (paper Eq. 13-14)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from bso_lightning.optim import functional
from bso_lightning.optim.base import BinaryOptimizer
from bso_lightning.optim.checks import check_betas, check_eps, check_threshold, check_time_step


def check_eps_placement(value: Any) -> str:
    """``inside`` (the paper: γ·sqrt(v + ε)) or ``outside`` (the authors' code: γ·(sqrt(v) + ε))."""
    if value not in functional.EPS_PLACEMENTS:
        raise ValueError(f"eps_placement must be one of {functional.EPS_PLACEMENTS}, got {value!r}")
    return value


class TBSO(BinaryOptimizer):
    """Flip binary weights against a threshold scaled by a per-time-step gradient scale.

    Per binary tensor W with momentum M (size of W) and v (fp32, one scalar per time step)::

        M    <- beta1 * M    + (1 - beta1) * G                           (Eq. 13)
        v[t] <- beta2 * v[t] + (1 - beta2) * mean(G ** 2)                (Eq. 13)
        W    <- -W  exactly where  W * M > threshold * sqrt(v[t] + eps)  (Eq. 14)

    No bias correction. ``v`` grows with zeros when a later call uses a larger ``t``
    (e.g. pre-train with T = 1, fine-tune with T = 6).

    Args:
        params: binary parameters (values exactly ±1, or ``PackedBinaryParameter``) or param-group dicts.
        threshold: γ >= 0; hyper-parameter key ``threshold``.
        betas: (β1, β2), each in [0, 1); key ``betas``.
        eps: ε > 0; key ``eps``.
        eps_placement: ``"inside"`` (Eq. 14 as the paper writes it) or ``"outside"`` (the authors' code:
            W·M / (sqrt(v[t]) + ε) > γ); key ``eps_placement``.
        fused, momentum_dtype, rounding_seed: as in :class:`~bso_lightning.optim.BSO`.

    A tensor whose updated M or v[t] is not finite (NaN/Inf gradient, or mean(G²)
    overflowing float32) is left untouched for that step and counted in ``nonfinite_counts()``.
    """

    _state_keys = BinaryOptimizer._state_keys | {"v"}

    def __init__(self, params: Iterable[Any], threshold: float = 5e-7, betas: tuple[float, float] = (0.999, 0.99999),
                 eps: float = 1e-10, eps_placement: str = "inside", fused: bool | None = None,
                 momentum_dtype: torch.dtype | str = "float32", rounding_seed: int = 0) -> None:
        defaults = dict(threshold=check_threshold(threshold), betas=check_betas(betas), eps=check_eps(eps),
                        eps_placement=check_eps_placement(eps_placement))
        super().__init__(params, defaults, fused=fused, momentum_dtype=momentum_dtype, rounding_seed=rounding_seed)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_threshold(group["threshold"])
        check_betas(group["betas"])
        check_eps(group["eps"])
        check_eps_placement(group.setdefault("eps_placement", "inside"))  # (checkpoints written before the option)

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

    def _update(self, group, params, grads, states, noises, time_step, fused) -> None:
        functional.tbso(params, grads, [s["momentum"] for s in states],
                        [self._v_with_length(s, time_step + 1) for s in states], [s["last_flips"] for s in states],
                        [s["nonfinite_steps"] for s in states], time_step=time_step, betas=group["betas"],
                        threshold=group["threshold"], eps=group["eps"], eps_placement=group["eps_placement"],
                        rounding_noise=noises, momentum_scales=[s.get("momentum_scale") for s in states],
                        fused=fused)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, time_step: int = 0) -> Any:
        """One update (Eq. 13-14) for time step ``time_step`` (an int >= 0)."""
        return self._step(closure, check_time_step(time_step))

    def set_backward_time_step(self, time_step: int) -> None:
        super().set_backward_time_step(check_time_step(time_step))

    def flip_thresholds(self, time_step: int) -> Tensor:
        """float32 [n_params]: the current flip threshold of each tensor at t (v[t] = 0 if unseen)."""
        t = check_time_step(time_step)
        device = self.binary_parameters()[0].device
        values = []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                v = state["v"] if state and "v" in state else None
                v_t = v[t] if v is not None and t < v.numel() else torch.zeros((), device=p.device)
                limit = functional.tbso_flip_threshold(
                    torch.as_tensor(group["threshold"], dtype=torch.float32, device=p.device), v_t,
                    group["eps"], group.get("eps_placement", "inside") == "outside")
                values.append(limit.to(device))
        return torch.stack(values)
