"""Hyper-parameter schedules for the binary optimizers: decay γ and (1 − β) together.

The convergence theorem assumes γ and (1 − β) decay like 1/√k (``InverseSqrtDecay``); the
authors' scripts multiply them by 0.1 every 50 epochs (``StepDecay(50)``). A decay rule is
any callable ``k -> factor``. The ``run_*`` rules (:func:`run_decay`) are relative to the run's length
``total`` (in batches, say), so one setting behaves the same on a 2-epoch and a 400-epoch run.

The schedule classes (:class:`ConstantSchedule`, :class:`StepSchedule`, :class:`InverseSqrtSchedule`,
:class:`RunStepSchedule`, :class:`RunExponentialSchedule`, :class:`RunInverseSqrtSchedule`) are what a classifier
is given (``OnlineClassifier(schedule=...)``, ``class_path``/``init_args`` in YAML, like LightningCLI's
``LRSchedulerCallable``): each takes the binary optimizer first and its own hyper-parameters after it, and says
in ``interval`` whether it advances per ``"epoch"`` or per training batch (``"step"``). A ``Run*`` schedule is
relative to the run: it holds γ and β until :meth:`RunSchedule.set_run_length` gives it the run's length in
training batches (the classifier does, once the fit loop knows it) and advances once per batch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

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
    """f(k) = factor ** (max(k − offset, 0) // every) (the authors: ×0.1 every 50 epochs, 20 on ImageNet).

    ``offset`` delays every step by that many units: the authors' scheduler steps after epoch k with
    ``k % 50 == 0 and k > 0``, so their first decayed epoch is 51 (0-based), one later than ``offset=0``'s 50:
    ``offset=1`` reproduces them.
    """

    every: int
    factor: float = 0.1
    offset: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.every, numbers.Integral) or isinstance(self.every, bool) or self.every < 1:
            raise ValueError(f"every must be an int >= 1, got {self.every!r}")
        if not isinstance(self.factor, numbers.Real) or not 0.0 < self.factor <= 1.0:
            raise ValueError(f"factor must be in (0, 1], got {self.factor!r}")
        if not isinstance(self.offset, numbers.Integral) or isinstance(self.offset, bool) or self.offset < 0:
            raise ValueError(f"offset must be an int >= 0, got {self.offset!r}")

    def __call__(self, k: int) -> float:
        return float(self.factor) ** (max(_check_k(k) - self.offset, 0) // self.every)


@dataclass(frozen=True)
class InverseSqrtDecay:
    """f(k) = 1 / sqrt(1 + k / scale) (the 1/√k of the convergence theorem)."""

    scale: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.scale, numbers.Real) or not (0.0 < self.scale < math.inf):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale!r}")

    def __call__(self, k: int) -> float:
        return 1.0 / math.sqrt(1.0 + _check_k(k) / self.scale)


def _check_total(total: int) -> int:
    if not isinstance(total, numbers.Integral) or isinstance(total, bool) or total < 1:
        raise ValueError(f"total (the run's length in schedule units) must be an int >= 1, got {total!r}")
    return int(total)


def _check_final(final: float) -> float:
    if not isinstance(final, numbers.Real) or isinstance(final, bool) or not 0.0 < final <= 1.0:
        raise ValueError(f"final (the factor at the end of the run) must be in (0, 1], got {final!r}")
    return float(final)


@dataclass(frozen=True)
class RunFractionStepDecay:
    """f(k) = factor ** floor(k / (fraction · total)): a step every ``fraction`` of a run of ``total`` units.

    The authors' ×0.1 every 50 of 400 epochs is ``fraction = 0.125`` (seven steps, ×1e-7 at the end), at any
    run length.
    """

    total: int
    fraction: float = 0.125
    factor: float = 0.1

    def __post_init__(self) -> None:
        _check_total(self.total)
        if not isinstance(self.fraction, numbers.Real) or not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction!r}")
        if not isinstance(self.factor, numbers.Real) or not 0.0 < self.factor <= 1.0:
            raise ValueError(f"factor must be in (0, 1], got {self.factor!r}")

    def __call__(self, k: int) -> float:
        steps = math.floor(min(_check_k(k), self.total) / (self.fraction * self.total) + 1e-9)
        return float(self.factor) ** steps


@dataclass(frozen=True)
class ExponentialDecay:
    """f(k) = final ** min(k / total, 1): log-linear from 1 to ``final`` over a run of ``total`` units.

    A smooth step decay (×0.1 every 50 of 400 epochs is about ``final = 1e-8``), held at ``final`` after the run.
    """

    total: int
    final: float = 1e-3

    def __post_init__(self) -> None:
        _check_total(self.total)
        _check_final(self.final)

    def __call__(self, k: int) -> float:
        return float(self.final) ** (min(_check_k(k), self.total) / self.total)


def run_inverse_sqrt_decay(total: int, final: float = 1e-3) -> Callable[[int], float]:
    """The theorem's 1/√k, scaled so that f(total) = ``final``: ``InverseSqrtDecay(total / (final⁻² − 1))``
    (``ConstantDecay`` for ``final = 1``)."""
    total, final = _check_total(total), _check_final(final)
    if final == 1.0:
        return ConstantDecay()
    return InverseSqrtDecay(scale=total / (final ** -2 - 1.0))


#: Decay shapes relative to the run (``run_decay``): name -> what ``f`` does over a run of ``total`` units.
RUN_DECAYS = ("run_step", "run_exp", "run_inv_sqrt")


def run_decay(shape: str, total: int, *, fraction: float = 0.125, factor: float = 0.1,
              final: float = 1e-3) -> Callable[[int], float]:
    """A decay over a run of ``total`` units: ``run_step`` (× ``factor`` every ``fraction`` of the run),
    ``run_exp`` (log-linear to ``final``) or ``run_inv_sqrt`` (1/√k, reaching ``final`` at the end)."""
    if shape == "run_step":
        return RunFractionStepDecay(total, fraction=fraction, factor=factor)
    if shape == "run_exp":
        return ExponentialDecay(total, final=final)
    if shape == "run_inv_sqrt":
        return run_inverse_sqrt_decay(total, final=final)
    raise ValueError(f"shape must be one of {RUN_DECAYS}, got {shape!r}")


class BinaryHyperparameterScheduler:
    """Set ``threshold = base·f(k)`` and ``1 − beta = (1 − base_beta)·f(k)`` in every param group.

    For TBSO only β1 is scheduled (``betas[0]``); β2 is left alone. Base values are read from
    the optimizer at construction, where k = 0 is applied. Each ``step()`` increments k.

    Which unit k counts is the caller's choice: call ``step()`` once per epoch for the authors'
    ``StepDecay(50)``, or once per optimizer step for the theorem's ``InverseSqrtDecay``.
    (Lightning's ``global_step`` counts every ``opt.step()``: 2T per batch with real-time updates
    and two optimizers.) ``interval`` names that unit for a classifier: ``"epoch"`` here.
    """

    interval = "epoch"

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


# --------------------------------------------------------------------------- schedule classes

INTERVALS = ("epoch", "step")


def _check_interval(interval: Any) -> str:
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    return interval


class ConstantSchedule(BinaryHyperparameterScheduler):
    """γ and β held at the optimizer's values (f(k) = 1)."""

    interval = "epoch"

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        super().__init__(optimizer, ConstantDecay())


class StepSchedule(BinaryHyperparameterScheduler):
    """γ and 1 − β × ``factor`` every ``every`` units (:class:`StepDecay`; the authors: ×0.1 every 50 epochs).

    ``interval``: the unit, ``"epoch"`` or ``"step"`` (one per training batch); ``offset``: delay every step by that
    many units (the authors' first decayed epoch is 51: ``offset=1``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, every: int = 50, factor: float = 0.1, offset: int = 0,
                 interval: Literal["epoch", "step"] = "epoch") -> None:
        self.interval = _check_interval(interval)
        super().__init__(optimizer, StepDecay(every=every, factor=factor, offset=offset))


class InverseSqrtSchedule(BinaryHyperparameterScheduler):
    """γ and 1 − β × 1/sqrt(1 + k/``scale``) (:class:`InverseSqrtDecay`, the convergence theorem's 1/√k)."""

    def __init__(self, optimizer: torch.optim.Optimizer, scale: float = 1.0,
                 interval: Literal["epoch", "step"] = "epoch") -> None:
        self.interval = _check_interval(interval)
        super().__init__(optimizer, InverseSqrtDecay(scale=scale))


class RunSchedule(BinaryHyperparameterScheduler):
    """A schedule relative to the run: constant until :meth:`set_run_length`, then ``run_decay(shape, total)``;
    advances once per training batch (k/total = the fraction of the run's batches done)."""

    interval = "step"
    shape = "run_exp"

    def __init__(self, optimizer: torch.optim.Optimizer, **decay_args: float) -> None:
        self.decay_args = decay_args
        run_decay(self.shape, 1, **decay_args)  # checks the arguments now, not when the run starts
        super().__init__(optimizer, ConstantDecay())

    def set_run_length(self, total: int) -> None:
        """Decay over a run of ``total`` training batches, applied at once at the current k (a resumed run's)."""
        self.decay = run_decay(self.shape, total, **self.decay_args)
        self._apply()


class RunStepSchedule(RunSchedule):
    """γ and 1 − β × ``factor`` every ``fraction`` of the run (0.125: the authors' 50 of 400 epochs)."""

    shape = "run_step"

    def __init__(self, optimizer: torch.optim.Optimizer, fraction: float = 0.125, factor: float = 0.1) -> None:
        super().__init__(optimizer, fraction=fraction, factor=factor)


class RunExponentialSchedule(RunSchedule):
    """γ and 1 − β decayed log-linearly from 1× to ``final``× over the run (the default; docs/hyperparameters.md)."""

    shape = "run_exp"

    def __init__(self, optimizer: torch.optim.Optimizer, final: float = 1e-3) -> None:
        super().__init__(optimizer, final=final)


class RunInverseSqrtSchedule(RunSchedule):
    """γ and 1 − β × 1/√k scaled to reach ``final``× at the end of the run."""

    shape = "run_inv_sqrt"

    def __init__(self, optimizer: torch.optim.Optimizer, final: float = 1e-3) -> None:
        super().__init__(optimizer, final=final)
