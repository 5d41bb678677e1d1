"""Fused BSO/T-BSO updates: one parameter group's whole step compiled by ``torch.compile``.

The eager step (``_common.masked_ema_`` / ``flip_``) runs one PyTorch kernel per operation, so it
reads and writes every binary tensor about eight times; compiled, each tensor is read once for
the finiteness check (and T-BSO's mean(G²)) and once for the update of M and W together, which is
less memory traffic than ``torch.optim.SGD``'s momentum step.

The functions below have the eager step's semantics (Eq. 11-12 and Eq. 13-14; a tensor whose
gradient is not finite is skipped and counted; flips counted without a host sync; M may differ from
the eager step's in the last bit, as the compiled lerp rounds on its own) and are plain PyTorch: if ``torch.compile`` falls back to running them as Python (recompile limit), the
results are the same. Hyper-parameters enter as 0-dim float32 tensors (``1 − β`` computed on the
host, as the eager step does), so a schedule that changes γ or β every step does not recompile.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["bso_update", "tbso_update", "by_device"]


def _flip_and_record(p: Tensor, new_m: Tensor, limit: Tensor, ok: Tensor, last_flips: Tensor,
                     nonfinite_steps: Tensor) -> Tensor:
    """Eq. 12 / 14: ``W <- -W`` where ``W·M > limit`` (and ``ok``); returns the flip mask."""
    flip = (p.to(torch.float32) * new_m > limit) & ok
    p.copy_(torch.where(flip, -p, p))
    last_flips.copy_(flip.sum())
    nonfinite_steps.add_((~ok).to(torch.int64))
    return flip


def _bso_update(params: list[Tensor], grads: list[Tensor], momenta: list[Tensor], last_flips: list[Tensor],
                nonfinite_steps: list[Tensor], one_minus_beta: Tensor, threshold: Tensor, reset_momentum: bool) -> None:
    for p, g, m, flips, skips in zip(params, grads, momenta, last_flips, nonfinite_steps):
        g = g.to(torch.float32)
        ok = torch.isfinite((g * g).sum())  # false exactly when G holds NaN/Inf or ‖G‖² overflows
        new_m = torch.where(ok, torch.lerp(m, g, one_minus_beta), m)  # Eq. 11
        flip = _flip_and_record(p, new_m, threshold, ok, flips, skips)
        m.copy_(torch.where(flip, 0.0, new_m) if reset_momentum else new_m)


def _tbso_update(params: list[Tensor], grads: list[Tensor], momenta: list[Tensor], vs: list[Tensor],
                 time_step: Tensor, last_flips: list[Tensor], nonfinite_steps: list[Tensor], one_minus_beta1: Tensor,
                 beta2: Tensor, one_minus_beta2: Tensor, threshold: Tensor, eps: Tensor) -> None:
    for p, g, m, v, flips, skips in zip(params, grads, momenta, vs, last_flips, nonfinite_steps):
        g = g.to(torch.float32)
        v_t = v.index_select(0, time_step).reshape(())  # time_step: int64 [1] (no recompile per t)
        new_v_t = v_t * beta2 + (g * g).sum() * (one_minus_beta2 / g.numel())  # Eq. 13, mean(G²)
        ok = torch.isfinite(new_v_t)
        new_m = torch.where(ok, torch.lerp(m, g, one_minus_beta1), m)  # Eq. 13
        v_t = torch.where(ok, new_v_t, v_t)
        v.index_copy_(0, time_step, v_t.reshape(1))
        _flip_and_record(p, new_m, threshold * torch.sqrt(v_t + eps), ok, flips, skips)  # Eq. 14
        m.copy_(new_m)


#: Compiled variants (list lengths, dtypes, ranks, devices, reset on/off) one process may hold; past
#: this, dynamo runs the functions as plain Python (the same results, unfused) with a warning.
RECOMPILE_LIMIT = 64

_compiled: dict[str, Callable[..., None]] = {}


def _compiled_fn(name: str) -> Callable[..., None]:
    """``torch.compile`` of ``_bso_update`` / ``_tbso_update``, built on first use (compiling takes seconds)."""
    if name not in _compiled:
        fn = {"bso": _bso_update, "tbso": _tbso_update}[name]
        compiled = torch.compile(fn, dynamic=None)

        def call(*args: object) -> None:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                compiled(*args)

        _compiled[name] = call
    return _compiled[name]


def by_device(params: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``params`` grouped by device (one compiled call per device)."""
    groups: dict[torch.device, list[int]] = defaultdict(list)
    for i, p in enumerate(params):
        groups[p.device].append(i)
    return list(groups.values())


def _scalar(value: float | Tensor, device: torch.device) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=device)


def bso_update(params: list[Tensor], momenta: list[Tensor], last_flips: list[Tensor],
               nonfinite_steps: list[Tensor], beta: float, threshold: float, reset_momentum: bool) -> None:
    """BSO's step (Eq. 11-12) on tensors of one device, fused; updates params and state in place."""
    device = params[0].device
    _compiled_fn("bso")(params, [p.grad for p in params], momenta, last_flips, nonfinite_steps,
                        _scalar(1.0 - beta, device), _scalar(threshold, device), bool(reset_momentum))


def tbso_update(params: list[Tensor], momenta: list[Tensor], vs: list[Tensor], time_step: int,
                last_flips: list[Tensor], nonfinite_steps: list[Tensor], betas: tuple[float, float],
                threshold: float, eps: float) -> None:
    """T-BSO's step (Eq. 13-14) for time step ``time_step`` on tensors of one device, fused; ``vs`` hold
    at least ``time_step + 1`` entries."""
    device = params[0].device
    _compiled_fn("tbso")(params, [p.grad for p in params], momenta, vs,
                         torch.tensor([time_step], dtype=torch.int64, device=device), last_flips, nonfinite_steps,
                         _scalar(1.0 - betas[0], device), _scalar(betas[1], device), _scalar(1.0 - betas[1], device),
                         _scalar(threshold, device), _scalar(eps, device))
