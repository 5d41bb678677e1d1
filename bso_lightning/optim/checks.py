"""Argument checks of the BSO/T-BSO hyper-parameters (public: the LightningModules check with them too).

Each raises ``ValueError`` naming the argument and the allowed range (nothing is silently clipped).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor



def _is_real_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_threshold(value: Any, name: str = "threshold") -> float:
    """γ: a finite number >= 0."""
    if not _is_real_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_decay(value: Any, name: str = "beta") -> float:
    """A decay rate β in [0, 1)."""
    if not _is_real_number(value) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def check_betas(value: Any, name: str = "betas") -> tuple[float, float]:
    """(β1, β2), each in [0, 1)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise ValueError(f"{name} must be a pair (beta1, beta2), each in [0, 1), got {value!r}")
    return check_decay(value[0], f"{name}[0]"), check_decay(value[1], f"{name}[1]")


def check_eps(value: Any, name: str = "eps") -> float:
    """ε: a finite number > 0."""
    if not _is_real_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_time_step(value: Any) -> int:
    """The time-step index t: an int >= 0."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
        raise ValueError(f"time_step must be an int >= 0, got {value!r}")
    return int(value)


def check_binary_values(params: Iterable[Tensor], first_index: int = 0) -> None:
    """Raise if a parameter holds anything but exactly ±1 (runs once, at construction)."""
    for index, p in enumerate(params, start=first_index):
        if p.is_meta:
            continue
        with torch.no_grad():
            bad = (p != 1) & (p != -1)
            if bool(bad.any()):
                example = p[bad].flatten()[0].item()
                raise ValueError(
                    f"parameter {index} (shape {list(p.shape)}) holds values other than ±1 "
                    f"(e.g. {example!r}); binary optimizers only accept weights in {{-1, +1}} "
                    "- give full-precision parameters to another optimizer"
                )
