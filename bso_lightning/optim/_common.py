"""Pieces shared by BSO and T-BSO: argument checks, the masked update, flip accounting.

Everything that runs inside ``step()`` is tensor code without host-device syncs: the
"is this update finite?" decision is a 0-dim bool tensor that masks the update instead of
a Python ``if``.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from itertools import chain
from typing import Any

import torch
from torch import Tensor

# Dtype of every state entry, whatever the parameter's dtype (momentum stays fp32 for bf16 weights).
STATE_DTYPES: dict[str, torch.dtype] = {
    "momentum": torch.float32,
    "v": torch.float32,
    "last_flips": torch.int64,
    "nonfinite_steps": torch.int64,
}


# --------------------------------------------------------------------------- argument checks


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


# --------------------------------------------------------------------------- tensor helpers


def ema_candidates(states: Sequence[Tensor], updates: Sequence[Tensor], beta: float) -> list[Tensor]:
    """Return ``beta * s + (1 - beta) * u`` for each pair, as new tensors (Eq. 11 / Eq. 13).

    Uses ``torch._foreach_*`` per device; the caller decides per tensor whether to commit.
    """
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, s in enumerate(states):
        by_device[s.device].append(i)
    out: dict[int, Tensor] = {}
    for indices in by_device.values():
        new = torch._foreach_mul([states[i] for i in indices], beta)
        torch._foreach_add_(new, [updates[i] for i in indices], alpha=1.0 - beta)
        out.update(zip(indices, new))
    return [out[i] for i in range(len(states))]


def commit_(state: Tensor, candidate: Tensor, ok: Tensor) -> None:
    """``state <- candidate`` if the 0-dim bool ``ok`` is true, else unchanged (no sync)."""
    state.copy_(torch.where(ok, candidate, state))


def flip_where_(weight: Tensor, score: Tensor, threshold: float | Tensor, ok: Tensor) -> Tensor:
    """Flip ``weight`` in place exactly where ``weight * score > threshold`` and ``ok``.

    Eq. 12 / Eq. 14 without ``sign()`` (``sign(0) = 0`` would create zeros). Returns the mask.
    """
    mask = torch.gt(weight * score, threshold) & ok
    weight.copy_(torch.where(mask, -weight, weight))
    return mask


def record_(state: dict[str, Tensor], mask: Tensor, ok: Tensor) -> None:
    """Update the per-tensor flip accounting (``last_flips``, ``nonfinite_steps``)."""
    state["last_flips"].copy_(mask.sum())
    state["nonfinite_steps"].add_(~ok)


# --------------------------------------------------------------------------- base class


class BinaryOptimizer(torch.optim.Optimizer):
    """Base of BSO and TBSO: checks, state bookkeeping and flip accounting.

    Subclasses implement ``_check_group(group)`` (hyper-parameters) and may extend
    ``_state_keys`` / ``_init_state`` with their own state entries.
    """

    #: State entries every stepped parameter has.
    _state_keys: frozenset[str] = frozenset({"momentum", "last_flips", "nonfinite_steps"})

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any]) -> None:
        if isinstance(params, Tensor):
            raise TypeError("params must be an iterable of Tensors or dicts, got a Tensor")
        params = list(params)
        if not params:
            raise ValueError(f"{type(self).__name__} got an empty parameter list; pass at least one binary parameter")
        super().__init__(params, defaults)

    # -- construction ------------------------------------------------------------------

    def _check_group(self, group: dict[str, Any]) -> None:
        raise NotImplementedError

    def _init_state(self, p: Tensor, state: dict[str, Any]) -> None:
        """Add the missing state entries of ``p`` (all of them at its first step)."""
        if "momentum" not in state:
            state["momentum"] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
        for key in ("last_flips", "nonfinite_steps"):
            if key not in state:
                state[key] = torch.zeros((), dtype=torch.int64, device=p.device)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group after checking its hyper-parameters and that its weights are ±1."""
        first_index = sum(len(g["params"]) for g in self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            self._check_group(group)
            check_binary_values(group["params"], first_index)
        except ValueError:
            self.param_groups.pop()
            raise

    # -- step helpers ------------------------------------------------------------------

    @staticmethod
    def _evaluate(closure: Callable[[], Any] | None) -> Any:
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def _params_with_grad(self, group: dict[str, Any]) -> list[Tensor]:
        """Parameters of ``group`` that have a gradient; initialises their state.

        Parameters without a gradient are skipped and their ``last_flips`` set to 0.
        """
        params = []
        for p in group["params"]:
            state = self.state.get(p)
            if p.grad is None or p.numel() == 0:
                if state and "last_flips" in state:
                    state["last_flips"].zero_()
                continue
            if p.grad.is_sparse:
                raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
            if state is None or not self._state_keys <= state.keys():
                self._init_state(p, self.state[p])
            params.append(p)
        return params

    # -- accounting --------------------------------------------------------------------

    def binary_parameters(self) -> list[Tensor]:
        """All parameters of all groups, flattened in order."""
        return [p for group in self.param_groups for p in group["params"]]

    def _stacked(self, key: str, default: Callable[[Tensor], Tensor]) -> Tensor:
        params = self.binary_parameters()
        device = params[0].device
        values = []
        for p in params:
            state = self.state.get(p)
            value = state[key] if state and key in state else default(p)
            values.append(value.to(device))
        return torch.stack(values)

    def flip_counts(self) -> Tensor:
        """int64 [n_params]: entries flipped at the last step (0 for params never stepped)."""
        return self._stacked("last_flips", lambda p: torch.zeros((), dtype=torch.int64, device=p.device))

    def nonfinite_counts(self) -> Tensor:
        """int64 [n_params]: steps skipped per tensor because its update was not finite."""
        return self._stacked("nonfinite_steps", lambda p: torch.zeros((), dtype=torch.int64, device=p.device))

    # -- checkpoints -------------------------------------------------------------------

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like ``torch.optim.Optimizer`` but keep the state dtypes of ``STATE_DTYPES``.

        (The base class would cast every state tensor to the parameter's dtype: the int64
        counters and the fp32 momentum of a bf16 weight would be corrupted.)
        """
        saved_state = state_dict["state"]
        super().load_state_dict({**state_dict, "state": {}})
        id_map = dict(
            zip(
                chain.from_iterable(g["params"] for g in state_dict["param_groups"]),
                chain.from_iterable(g["params"] for g in self.param_groups),
            )
        )
        for key, values in saved_state.items():
            if key not in id_map:
                continue
            param = id_map[key]
            self.state[param] = {
                name: (
                    value.to(device=param.device, dtype=STATE_DTYPES.get(name, value.dtype), copy=True)
                    if isinstance(value, Tensor)
                    else value
                )
                for name, value in values.items()
            }
