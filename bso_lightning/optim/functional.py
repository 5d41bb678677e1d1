"""The BSO and T-BSO updates (paper Eq. 11–14), written once.

:func:`bso` and :func:`tbso` are the functional forms (as ``torch.optim.sgd.sgd``): lists of weights, gradients
and state in, everything updated in place. Each dispatches to an eager implementation or to the same per-tensor
code compiled by ``torch.compile`` (``fused=True``); both run :func:`_bso_tensor` / :func:`_tbso_tensor`, so the
two paths cannot drift apart (the compiled momentum may differ in the last bit of float32 rounding).

Per binary tensor W (±1, dense or packed as bits), gradient G and momentum M::

    BSO    M ← β·M + (1 − β)·G                                  (Eq. 11)
           W ← −W where W·M > γ                                 (Eq. 12)
    T-BSO  M ← β1·M + (1 − β1)·G,  v[t] ← β2·v[t] + (1 − β2)·mean(G²)   (Eq. 13)
           W ← −W where W·M > γ·sqrt(v[t] + ε)                  (Eq. 14; ``eps_placement="inside"``, the paper)
           W ← −W where W·M / (sqrt(v[t]) + ε) > γ              (``eps_placement="outside"``, the authors' code)

A tensor whose gradient is not finite — NaN/Inf, or ‖G‖² overflowing float32 (|G| ≳ 1.8e19) — is left untouched
(weights and state) and counted in ``nonfinite_steps``; so M stays finite: |M| ≤ max |G| of the steps taken.
Everything is tensor code without a host-device sync (the "ok" decision is a 0-dim bool tensor).

A bfloat16 momentum is updated in float32 and stored by stochastic rounding (``rounding_noise``: uniform 16-bit
integers, one per entry): with β = 1 − 1e-3 the update (1 − β)·(G − M) is far below bfloat16's resolution, and
round-to-nearest would stall M (``rounding_noise=None`` does exactly that; tests/optim/test_momentum_dtype.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from bso_lightning.nn.packed import PackedBinaryParameter, pack_bits, unpack_signs

__all__ = ["bso", "tbso", "stochastic_round_to_bfloat16", "tbso_flip_threshold", "EPS_PLACEMENTS"]

EPS_PLACEMENTS = ("inside", "outside")


# --------------------------------------------------------------------------- per-tensor math (shared)

def stochastic_round_to_bfloat16(x: Tensor, noise: Tensor) -> Tensor:
    """Round float32 ``x`` to bfloat16, up with probability equal to the dropped fraction (unbiased).

    ``noise``: int32 in [0, 2**16), same shape. Adds it to the 16 low bits of x's bit pattern and truncates;
    non-finite x are not expected here (the update keeps M finite).
    """
    bits = x.view(torch.int32)
    rounded = torch.bitwise_and(bits + noise, -65536)  # -65536 == 0xFFFF0000 as int32
    return rounded.view(torch.float32).to(torch.bfloat16)


def _store_momentum_(m: Tensor, new_m: Tensor, noise: Tensor | None) -> None:
    """Write the float32 ``new_m`` into the state ``m`` (float32: as is; bfloat16: stochastic rounding if ``noise``)."""
    if m.dtype == torch.float32:
        m.copy_(new_m)
    elif noise is not None:
        m.copy_(stochastic_round_to_bfloat16(new_m, noise))
    else:
        m.copy_(new_m)  # round to nearest: stalls (kept only to show the problem)


def tbso_flip_threshold(threshold: Tensor | float, v_t: Tensor, eps: Tensor | float, outside: bool) -> Tensor:
    """The T-BSO flip threshold on W·M: γ·sqrt(v[t] + ε) (Eq. 14) or, ``outside``, γ·(sqrt(v[t]) + ε)."""
    return threshold * (torch.sqrt(v_t) + eps) if outside else threshold * torch.sqrt(v_t + eps)


def _signs(w: Tensor, shape: torch.Size | None) -> Tensor:
    """W as float32 ±1: the tensor itself (dense) or its bits unpacked (``shape`` given)."""
    return w.to(torch.float32) if shape is None else unpack_signs(w, shape, torch.float32)


def _apply_flips_(w: Tensor, flip: Tensor, shape: torch.Size | None) -> None:
    """W ← −W where ``flip``: a sign change (dense, never ``sign(0)``) or an XOR of the bits (packed)."""
    if shape is None:
        w.copy_(torch.where(flip, -w, w))
    else:
        w.bitwise_xor_(pack_bits(flip))


def _update_and_flip(w: Tensor, shape: torch.Size | None, g: Tensor, m: Tensor, one_minus_beta: Tensor,
                     limit: Tensor, ok: Tensor, reset: bool, noise: Tensor | None, last_flips: Tensor,
                     nonfinite_steps: Tensor) -> None:
    """Eq. 11/13 (momentum) then Eq. 12/14 (flip where W·M > limit), masked by the 0-dim bool ``ok``."""
    m32 = m.to(torch.float32)
    new_m = torch.where(ok, torch.lerp(m32, torch.nan_to_num(g, 0.0, 0.0, 0.0), one_minus_beta), m32)
    flip = (_signs(w, shape) * new_m > limit) & ok
    _apply_flips_(w, flip, shape)
    if reset:
        new_m = torch.where(flip, 0.0, new_m)
    _store_momentum_(m, new_m, noise)
    last_flips.copy_(flip.sum())
    nonfinite_steps.add_((~ok).to(torch.int64))


def _bso_tensor(w: Tensor, shape: torch.Size | None, g: Tensor, m: Tensor, last_flips: Tensor,
                nonfinite_steps: Tensor, noise: Tensor | None, one_minus_beta: Tensor, threshold: Tensor,
                reset: bool) -> None:
    """BSO on one tensor (Eq. 11–12)."""
    g = g.to(torch.float32)
    flat = g.reshape(-1)
    ok = torch.isfinite(torch.dot(flat, flat))  # false exactly when G holds NaN/Inf or ‖G‖² overflows
    _update_and_flip(w, shape, g, m, one_minus_beta, threshold, ok, reset, noise, last_flips, nonfinite_steps)


def _tbso_tensor(w: Tensor, shape: torch.Size | None, g: Tensor, m: Tensor, v: Tensor, time_step: Tensor,
                 last_flips: Tensor, nonfinite_steps: Tensor, noise: Tensor | None, one_minus_beta1: Tensor,
                 beta2: Tensor, one_minus_beta2: Tensor, threshold: Tensor, eps: Tensor, outside: bool) -> None:
    """T-BSO on one tensor (Eq. 13–14); ``time_step``: int64 [1] (a tensor, so t does not recompile)."""
    g = g.to(torch.float32)
    flat = g.reshape(-1)
    v_t = v.index_select(0, time_step).reshape(())
    new_v_t = v_t * beta2 + torch.dot(flat, flat) * (one_minus_beta2 / flat.numel())  # Eq. 13, mean(G²)
    ok = torch.isfinite(new_v_t)  # false exactly when G holds NaN/Inf or ‖G‖² overflows
    v_t = torch.where(ok, new_v_t, v_t)
    v.index_copy_(0, time_step, v_t.reshape(1))
    limit = tbso_flip_threshold(threshold, v_t, eps, outside)
    _update_and_flip(w, shape, g, m, one_minus_beta1, limit, ok, False, noise, last_flips, nonfinite_steps)


def _bso_tensors(ws, shapes, gs, ms, flips, skips, noises, one_minus_beta, threshold, reset) -> None:
    for w, shape, g, m, f, s, n in zip(ws, shapes, gs, ms, flips, skips, noises):
        _bso_tensor(w, shape, g, m, f, s, n, one_minus_beta, threshold, reset)


def _tbso_tensors(ws, shapes, gs, ms, vs, time_step, flips, skips, noises, one_minus_beta1, beta2,
                  one_minus_beta2, threshold, eps, outside) -> None:
    for w, shape, g, m, v, f, s, n in zip(ws, shapes, gs, ms, vs, flips, skips, noises):
        _tbso_tensor(w, shape, g, m, v, time_step, f, s, n, one_minus_beta1, beta2, one_minus_beta2, threshold,
                     eps, outside)


# --------------------------------------------------------------------------- compiled implementation

#: Compiled variants (list lengths, dtypes, shapes, devices, options) one process may hold; past this, dynamo
#: runs the functions as plain Python (the same results, unfused) with a warning.
RECOMPILE_LIMIT = 64
_compiled: dict[str, Callable[..., None]] = {}


def _compiled_fn(name: str) -> Callable[..., None]:
    """``torch.compile`` of :func:`_bso_tensors` / :func:`_tbso_tensors`, built on first use (takes seconds)."""
    if name not in _compiled:
        compiled = torch.compile({"bso": _bso_tensors, "tbso": _tbso_tensors}[name], dynamic=None)

        def call(*args: object) -> None:
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                compiled(*args)

        _compiled[name] = call
    return _compiled[name]


# --------------------------------------------------------------------------- the functional API

def _storage(weights: Sequence[Tensor]) -> tuple[list[Tensor], list[torch.Size | None]]:
    """Plain tensors to update in place (packed: the bits) and the logical shapes (None when dense)."""
    data, shapes = [], []
    for w in weights:
        packed = isinstance(w, PackedBinaryParameter)
        data.append(w.data if packed else w)
        shapes.append(w.logical_shape if packed else None)
    return data, shapes


def _scalar(value: float, device: torch.device) -> Tensor:
    return torch.as_tensor(value, dtype=torch.float32, device=device)


def bso(weights: Sequence[Tensor], grads: Sequence[Tensor], momenta: Sequence[Tensor], last_flips: Sequence[Tensor],
        nonfinite_steps: Sequence[Tensor], *, beta: float, threshold: float, reset_momentum_on_flip: bool = False,
        rounding_noise: Sequence[Tensor | None] | None = None, fused: bool = False) -> None:
    """BSO (Eq. 11–12) on tensors of one device; updates weights and state in place."""
    if not weights:
        return
    device = grads[0].device
    data, shapes = _storage(weights)
    noises = list(rounding_noise) if rounding_noise is not None else [None] * len(data)
    impl = _compiled_fn("bso") if fused else _bso_tensors
    impl(data, shapes, list(grads), list(momenta), list(last_flips), list(nonfinite_steps), noises,
         _scalar(1.0 - beta, device), _scalar(threshold, device), bool(reset_momentum_on_flip))


def tbso(weights: Sequence[Tensor], grads: Sequence[Tensor], momenta: Sequence[Tensor], vs: Sequence[Tensor],
         last_flips: Sequence[Tensor], nonfinite_steps: Sequence[Tensor], *, time_step: int,
         betas: tuple[float, float], threshold: float, eps: float, eps_placement: str = "inside",
         rounding_noise: Sequence[Tensor | None] | None = None, fused: bool = False) -> None:
    """T-BSO (Eq. 13–14) for time step ``time_step`` on tensors of one device; ``vs`` hold ≥ t + 1 entries."""
    if not weights:
        return
    if eps_placement not in EPS_PLACEMENTS:
        raise ValueError(f"eps_placement must be one of {EPS_PLACEMENTS}, got {eps_placement!r}")
    device = grads[0].device
    data, shapes = _storage(weights)
    noises = list(rounding_noise) if rounding_noise is not None else [None] * len(data)
    impl = _compiled_fn("tbso") if fused else _tbso_tensors
    impl(data, shapes, list(grads), list(momenta), list(vs), torch.tensor([time_step], device=device),
         list(last_flips), list(nonfinite_steps), noises, _scalar(1.0 - betas[0], device), _scalar(betas[1], device),
         _scalar(1.0 - betas[1], device), _scalar(threshold, device), _scalar(eps, device),
         eps_placement == "outside")
