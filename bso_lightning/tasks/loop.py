"""How one training batch of the online classifier runs: the settings of its per-time-step loop (paper Alg. 1)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bso_lightning.nn.saved_activations import SAVED_ACTIVATION_DTYPES

UPDATES = ("realtime", "accumulated")
NONFINITE = ("skip", "raise")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


@dataclass(frozen=True)
class OnlineLoop:
    """Per batch: for t = 0..T−1, forward, L[t] (Eq. 8), backward, step.

    Args:
        update_mode: ``"realtime"`` (step after every t, the paper's default) or ``"accumulated"`` (gradients add up
            over the T steps; one step after the last, T-BSO then uses time step 0).
        step_in_backward: step each binary tensor inside the backward as soon as its gradient is complete, then free
            it (realtime mode, one process, ``nonfinite="skip"``; the same flips, a smaller peak).
        saved_activation_dtype: ``"bfloat16"`` keeps the activations autograd saves for the backward in bfloat16.
        mse_weight: α of the loss (Eq. 8).
        nonfinite: what NaN/Inf inputs and gradients do (:mod:`bso_lightning.tasks.faults`): ``"skip"`` the batch or
            update, or ``"raise"`` ``NonFiniteError`` naming the batch, the time step and the culprit.
        max_skipped_fraction: with ``"skip"``, an epoch that drops more than this fraction of its batches stops.
    """

    update_mode: Literal["realtime", "accumulated"] = "realtime"
    step_in_backward: bool = True
    saved_activation_dtype: Literal["float32", "bfloat16"] = "float32"
    mse_weight: float = 0.05
    nonfinite: Literal["skip", "raise"] = "skip"
    max_skipped_fraction: float = 0.5

    def __post_init__(self) -> None:
        check_choice("loop.update_mode", self.update_mode, UPDATES)
        check_choice("loop.saved_activation_dtype", self.saved_activation_dtype, SAVED_ACTIVATION_DTYPES)
        check_choice("loop.nonfinite", self.nonfinite, NONFINITE)
        if not isinstance(self.step_in_backward, bool):
            raise ValueError(f"loop.step_in_backward must be true or false, got {self.step_in_backward!r}")
        if not isinstance(self.mse_weight, (int, float)) or not 0.0 <= self.mse_weight <= 1.0:
            raise ValueError(f"mse_weight must lie in [0, 1], got {self.mse_weight!r}")
        if not isinstance(self.max_skipped_fraction, (int, float)) or not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise ValueError(f"max_skipped_fraction must lie in [0, 1], got {self.max_skipped_fraction!r}")

    @classmethod
    def of(cls, value: "OnlineLoop | Mapping[str, Any] | None") -> "OnlineLoop":
        """An :class:`OnlineLoop` from itself, a plain dict of its fields (hyper-parameters) or ``None``."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(f"loop has no setting {unknown[0]!r} (it has {[f.name for f in dataclasses.fields(cls)]})")
            return cls(**value)
        raise ValueError(f"loop must be an OnlineLoop or a dict of its settings, got {value!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


__all__ = ["NONFINITE", "UPDATES", "OnlineLoop", "check_choice"]
