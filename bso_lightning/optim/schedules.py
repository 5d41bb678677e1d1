"""Hyper-parameter schedules for the binary optimizers: decay γ and (1 − β) together.

The convergence theorem assumes γ and (1 − β) decay like 1/√k (``InverseSqrtDecay``); the
authors' scripts multiply them by 0.1 every 50 epochs (``StepDecay(50)``). A decay rule is
any callable ``k -> factor``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .checks import check_decay, check_threshold


def _check_k(k: int) -> int:
    if not isinstance(k, numbers.Integral) or isinstance(k, bool) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    return int(k)


@dataclass(frozen=True)
class ConstantDecay:
    """f(k) = 1."""

    def __call__(self, k: int) -> float:
        _check_k(k)
        return 1.0


@dataclass(frozen=True)
class StepDecay:
    """f(k) = factor ** (k // every) (the authors: ×0.1 every 50 epochs, 20 on ImageNet)."""

    every: int
    factor: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.every, numbers.Integral) or isinstance(self.every, bool) or self.every < 1:
            raise ValueError(f"every must be an int >= 1, got {self.every!r}")
        if not isinstance(self.factor, numbers.Real) or not 0.0 < self.factor <= 1.0:
            raise ValueError(f"factor must be in (0, 1], got {self.factor!r}")

    def __call__(self, k: int) -> float:
        return float(self.factor) ** (_check_k(k) // self.every)


@dataclass(frozen=True)
class InverseSqrtDecay:
    """f(k) = 1 / sqrt(1 + k / scale) (the 1/√k of the convergence theorem)."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.scale, numbers.Real) or not (0.0 < self.scale < math.inf):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")

    def __call__(self, k: int) -> float:
        return 1.0 / math.sqrt(1.0 + _check_k(k) / self.scale)


class BinaryHyperparameterScheduler:
    """Set ``threshold = base·f(k)`` and ``1 − beta = (1 − base_beta)·f(k)`` in every param group.

    For TBSO only β1 is scheduled (``betas[0]``); β2 is left alone. Base values are read from
    the optimizer at construction, where k = 0 is applied. Each ``step()`` increments k.

    Which unit k counts is the caller's choice: call ``step()`` once per epoch for the authors'
    ``StepDecay(50)``, or once per optimizer step for the theorem's ``InverseSqrtDecay``.
    (Lightning's ``global_step`` counts every ``opt.step()``: 2T per batch with real-time updates
    and two optimizers.)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        decay: Callable[[int], float],
        decay_threshold: bool = True,
        decay_one_minus_beta: bool = True,
    ) -> None:
        if not callable(decay):
            raise ValueError(f"decay must be a callable k -> factor, got {decay!r}")
        self.optimizer = optimizer
        self.decay = decay
        self.decay_threshold = bool(decay_threshold)
        self.decay_one_minus_beta = bool(decay_one_minus_beta)
        self.base_thresholds: list[float] = []
        self.base_one_minus_betas: list[float] = []
        for i, group in enumerate(optimizer.param_groups):
            if "threshold" not in group or ("beta" not in group and "betas" not in group):
                raise ValueError(
                    f"param group {i} of {type(optimizer).__name__} has no 'threshold' and 'beta'/'betas'; "
                    "BinaryHyperparameterScheduler needs a BSO or TBSO optimizer"
                )
            self.base_thresholds.append(float(group["threshold"]))
            self.base_one_minus_betas.append(1.0 - float(self._beta(group)))
        self.last_k = 0
        self._apply()

    @staticmethod
    def _beta(group: dict[str, Any]) -> float:
        return group["beta"] if "beta" in group else group["betas"][0]

    def _apply(self) -> None:
        factor = float(self.decay(self.last_k))
        if not (math.isfinite(factor) and factor >= 0):
            raise ValueError(f"decay({self.last_k}) must be a finite number >= 0, got {factor!r}")
        for i, group in enumerate(self.optimizer.param_groups):
            if self.decay_threshold:
                group["threshold"] = check_threshold(self.base_thresholds[i] * factor)
            if self.decay_one_minus_beta:
                one_minus = self.base_one_minus_betas[i] * factor
                beta = 1.0 - one_minus
                if one_minus > 0 and beta == 1.0:
                    raise ValueError(
                        f"at k = {self.last_k}, 1 - beta = {one_minus!r} is below float64 resolution "
                        "(beta would round to 1.0); use a slower decay or fewer steps"
                    )
                check_decay(beta, "beta")
                if "beta" in group:
                    group["beta"] = beta
                else:
                    group["betas"] = (beta, group["betas"][1])

    def step(self) -> None:
        """Advance k by one and apply f(k)."""
        self.last_k += 1
        self._apply()

    def current_factor(self) -> float:
        """f(last_k)."""
        return float(self.decay(self.last_k))

    def state_dict(self) -> dict[str, Any]:
        """Plain python numbers: the counter and the base values."""
        return {
            "last_k": self.last_k,
            "base_thresholds": list(self.base_thresholds),
            "base_one_minus_betas": list(self.base_one_minus_betas),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the counter and base values, then re-apply f(k) to the optimizer."""
        n = len(self.optimizer.param_groups)
        for key in ("base_thresholds", "base_one_minus_betas"):
            if len(state_dict[key]) != n:
                raise ValueError(f"{key} has {len(state_dict[key])} entries, the optimizer has {n} param groups")
        self.last_k = _check_k(state_dict["last_k"])
        self.base_thresholds = [float(x) for x in state_dict["base_thresholds"]]
        self.base_one_minus_betas = [float(x) for x in state_dict["base_one_minus_betas"]]
        self._apply()
