"""Pieces shared by BSO and T-BSO: argument checks, the masked update, flip accounting.

Everything that runs inside ``step()`` is tensor code without host-device syncs: the
"is this update finite?" decision is a 0-dim bool tensor that masks the update instead of
a Python ``if``.
"""

from __future__ import annotations

import math
import numbers
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import Any

import torch
from torch import Tensor

from .fused import by_device as fused_by_device

# Dtype of every state entry, whatever the parameter's dtype (momentum stays fp32 for bf16 weights).
STATE_DTYPES: dict[str, torch.dtype] = {
    "momentum": torch.float32,
    "v": torch.float32,
    "last_flips": torch.int64,
    "nonfinite_steps": torch.int64,
}


from .checks import check_binary_values, check_betas, check_decay, check_eps, check_threshold, check_time_step  # noqa: F401


# --------------------------------------------------------------------------- tensor helpers
#
# The update reads and writes each binary tensor a handful of times and nothing more: one fused
# norm over all gradients (finiteness, and mean(G²) for T-BSO), one selection + one lerp for the
# momentum, and four passes for the flip, all through a scratch buffer that is reused across
# tensors and steps (no allocation of tensor-sized temporaries per step).


def gradient_norms(grads: Sequence[Tensor]) -> list[Tensor]:
    """L2 norm of every gradient (0-dim, fp32) with one ``torch._foreach_norm`` per device.

    A norm is non-finite exactly when the gradient holds NaN/Inf (or its squares overflow).
    """
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for i, g in enumerate(grads):
        by_device[g.device].append(i)
    out: dict[int, Tensor] = {}
    for indices in by_device.values():
        out.update(zip(indices, torch._foreach_norm([grads[i] for i in indices])))
    return [out[i] for i in range(len(grads))]


def masked_ema_(momentum: Tensor, grad: Tensor, beta: float, ok: Tensor, scratch: Tensor) -> None:
    """``M <- beta·M + (1 − beta)·G`` (Eq. 11 / Eq. 13) if the 0-dim bool ``ok``, else unchanged (no sync).

    Written as ``M.lerp_(G, (1 − beta)·ok)`` on a NaN/Inf-free copy of G, so a skipped tensor's
    momentum stays exactly as it was and non-finite values never reach the state.
    """
    weight = ok.to(torch.float32) * (1.0 - beta)
    momentum.lerp_(torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0, out=scratch), weight)


def flip_(weight: Tensor, momentum: Tensor, threshold: float | Tensor, ok: Tensor, scratch: Tensor,
          reset_momentum: bool = False) -> Tensor:
    """Flip ``weight`` in place exactly where ``weight · momentum > threshold`` and ``ok`` (Eq. 12 / Eq. 14).

    Never uses ``sign()`` (``sign(0) = 0`` would create zeros): ``W <- W − 2·W·[W·M > γ]``.
    With ``reset_momentum`` the momentum is zeroed where a weight flipped. Returns the number
    of flips as a 0-dim tensor (no sync).
    """
    limit = torch.where(ok, torch.as_tensor(threshold, dtype=torch.float32, device=weight.device), torch.inf)
    flips = torch.mul(weight, momentum, out=scratch)
    torch.gt(flips, limit, out=flips)  # 1.0 where the weight flips, else 0.0
    weight.addcmul_(weight, flips, value=-2.0)
    if reset_momentum:
        momentum.addcmul_(momentum, flips, value=-1.0)
    # a float32 sum of 0/1 values is exact below 2**24 entries (and much faster than count_nonzero)
    return flips.sum(dtype=torch.float64 if flips.numel() >= 2**24 else torch.float32)


def record_(state: dict[str, Tensor], flips: Tensor, ok: Tensor) -> None:
    """Update the per-tensor flip accounting (``last_flips``, ``nonfinite_steps``)."""
    state["last_flips"].copy_(flips)
    state["nonfinite_steps"].add_(~ok)


# --------------------------------------------------------------------------- base class


class BinaryOptimizer(torch.optim.Optimizer):
    """Base of BSO and TBSO: checks, state bookkeeping and flip accounting.

    Subclasses implement ``_check_group(group)`` (hyper-parameters) and may extend
    ``_state_keys`` / ``_init_state`` with their own state entries.
    """

    #: State entries every stepped parameter has.
    _state_keys: frozenset[str] = frozenset({"momentum", "last_flips", "nonfinite_steps"})

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], fused: bool = False) -> None:
        if not isinstance(fused, bool):
            raise TypeError(f"fused must be a bool, got {fused!r}")
        #: Step through the ``torch.compile``d update of :mod:`.fused` (an instance setting, not saved
        #: in state_dict: a checkpoint resumes with either path).
        self.fused = fused
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

    def _groups_to_step(self) -> Iterator[tuple[dict[str, Any], list[Tensor]]]:
        """Each group (hyper-parameters re-checked, as a schedule may have changed them) with its
        parameters that have a gradient; groups without any are skipped."""
        for group in self.param_groups:
            self._check_group(group)
            params = self._params_with_grad(group)
            if params:
                yield group, params

    def _by_device(self, params: list[Tensor]) -> list[tuple[list[Tensor], list[dict[str, Any]]]]:
        """``params`` and their states, split by device (one fused call each)."""
        out = []
        for indices in fused_by_device(params):
            ps = [params[i] for i in indices]
            out.append((ps, [self.state[p] for p in ps]))
        return out

    def _scratch_for(self, p: Tensor) -> Tensor:
        """A float32 view shaped like ``p`` into a buffer reused by every tensor and step (not state)."""
        buffers = self.__dict__.setdefault("_scratch_buffers", {})
        buffer = buffers.get(p.device)
        if buffer is None or buffer.numel() < p.numel():
            buffer = buffers[p.device] = torch.empty(p.numel(), dtype=torch.float32, device=p.device)
        return buffer[: p.numel()].view(p.shape)

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
