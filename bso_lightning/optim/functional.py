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

from bso_lightning.nn.packed import PackedBinaryParameter, _sign_table, pack_bits, unpack_signs

__all__ = ["bso", "tbso", "stochastic_round_to_bfloat16", "tbso_flip_threshold", "EPS_PLACEMENTS"]

EPS_PLACEMENTS = ("inside", "outside")


# --------------------------------------------------------------------------- per-tensor math (shared)

def stochastic_round_to_bfloat16(x: Tensor, noise: Tensor) -> Tensor:
    """Round float32 ``x`` to bfloat16, up with probability equal to the dropped fraction (unbiased).

    ``noise``: int32 in [0, 2**16), either shaped like ``x`` or a row that is repeated over ``x``'s entries
    (flattened). Adds it to the 16 low bits of x's bit pattern and truncates. ``x`` is overwritten.
    """
    bits = x.view(torch.int32).view(-1)
    if noise.numel() == bits.numel():
        bits.add_(noise.reshape(-1))
    else:
        width = noise.numel()
        whole = bits.numel() // width * width
        bits[:whole].view(-1, width).add_(noise)
        bits[whole:].add_(noise[: bits.numel() - whole])
    bits.bitwise_and_(-65536)  # -65536 == 0xFFFF0000 as int32: the bits bfloat16 keeps
    return x.to(torch.bfloat16)


def _store_momentum_(m: Tensor, new_m: Tensor, noise: Tensor | None) -> None:
    """Write the float32 ``new_m`` into the state ``m`` (float32: as is; bfloat16: stochastic rounding if ``noise``,
    which overwrites ``new_m``)."""
    if m.dtype == torch.float32 or noise is None:
        m.copy_(new_m)  # (bfloat16 without noise: round to nearest, which stalls; kept only to show the problem)
    else:
        m.copy_(stochastic_round_to_bfloat16(new_m, noise))


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


# --------------------------------------------------------------------------- eager implementation
#
# The same math as above with every temporary written into one reused float32 buffer (``out=``), so a step
# allocates nothing tensor-sized: fresh allocations cost page faults that dominate on CPU.

_MAGIC_PACK = sum(1 << (63 - 9 * k) for k in range(8)) - (1 << 64)  # 8 bytes of 0/1 -> one MSB-first byte
_workspaces: dict[torch.device, dict[str, Tensor]] = {}


def _workspace(device: torch.device, numel: int) -> dict[str, Tensor]:
    """Reused buffers for tensors of up to ``numel`` entries: ``f32`` [numel] and ``u8`` [ceil8(numel)]."""
    ws = _workspaces.get(device)
    if ws is None or ws["f32"].numel() < numel:
        padded = (numel + 7) // 8 * 8
        ws = _workspaces[device] = {"f32": torch.empty(numel, dtype=torch.float32, device=device),
                                    "m32": torch.empty(numel, dtype=torch.float32, device=device),
                                    "u8": torch.zeros(padded, dtype=torch.uint8, device=device)}
    return ws


def _eager_pack_(bytes01: Tensor) -> Tensor:
    """Pack a uint8 tensor of 0/1 (length a multiple of 8) MSB first: one multiply per 8 entries."""
    words = bytes01.view(torch.int64)
    return (torch.bitwise_right_shift(words * _MAGIC_PACK, 56) & 255).to(torch.uint8)


def _eager_update_and_flip(w: Tensor, shape: torch.Size | None, g: Tensor, m: Tensor, one_minus_beta: Tensor,
                           limit: Tensor, ok: Tensor, reset: bool, noise: Tensor | None, last_flips: Tensor,
                           nonfinite_steps: Tensor) -> None:
    """:func:`_update_and_flip` written into reused buffers (same results)."""
    n = g.numel()
    ws = _workspace(g.device, n)
    s = ws["f32"][:n].view(g.shape)
    torch.nan_to_num(g, 0.0, 0.0, 0.0, out=s)
    weight = ok.to(torch.float32) * one_minus_beta
    if m.dtype == torch.float32:
        m.lerp_(s, weight)  # Eq. 11 / 13
        new_m = m
    else:
        new_m = ws["m32"][:n].view(g.shape).copy_(m).lerp_(s, weight)
    limit_if_ok = torch.where(ok, limit, torch.inf)
    if shape is None:
        torch.mul(w, new_m, out=s)
        torch.gt(s, limit_if_ok, out=s)  # 1.0 where W·M > limit (Eq. 12 / 14)
        w.addcmul_(w, s, value=-2.0)  # W <- -W there (never sign(0))
    else:
        signs = ws["f32"][:n]
        if n % 8 == 0:
            torch.index_select(_sign_table(w.device, torch.float32), 0, w.to(torch.int32), out=signs.view(-1, 8))
        else:
            signs.copy_(unpack_signs(w, (n,), torch.float32))
        torch.mul(signs, new_m.reshape(-1), out=signs)
        torch.gt(signs, limit_if_ok, out=signs)  # 1.0 where W·M > limit (Eq. 12 / 14)
        u8 = ws["u8"]
        padded = (n + 7) // 8 * 8
        u8[:n].copy_(signs)
        u8[n:padded].zero_()
        w.bitwise_xor_(_eager_pack_(u8[:padded]))  # W <- -W there: one XOR per 8 weights
        s = signs.view(g.shape)
    flips = s.sum(dtype=torch.float64 if n >= 2**24 else torch.float32)
    if reset:
        new_m.addcmul_(new_m, s, value=-1.0)  # M <- 0 where flipped
    if new_m is not m:
        _store_momentum_(m, new_m, noise)
    last_flips.copy_(flips)
    nonfinite_steps.add_((~ok).to(torch.int64))


def _eager_bso_tensors(ws, shapes, gs, ms, flips, skips, noises, one_minus_beta, threshold, reset) -> None:
    for w, shape, g, m, f, sk, noise in zip(ws, shapes, gs, ms, flips, skips, noises):
        g = g.to(torch.float32)
        flat = g.reshape(-1)
        ok = torch.isfinite(torch.dot(flat, flat))
        _eager_update_and_flip(w, shape, g, m, one_minus_beta, threshold, ok, reset, noise, f, sk)


def _eager_tbso_tensors(ws, shapes, gs, ms, vs, time_step, flips, skips, noises, one_minus_beta1, beta2,
                        one_minus_beta2, threshold, eps, outside) -> None:
    t = int(time_step)  # (a host int here: the eager path never syncs on it)
    for w, shape, g, m, v, f, sk, noise in zip(ws, shapes, gs, ms, vs, flips, skips, noises):
        g = g.to(torch.float32)
        flat = g.reshape(-1)
        v_t = v[t]
        new_v_t = v_t * beta2 + torch.dot(flat, flat) * (one_minus_beta2 / flat.numel())
        ok = torch.isfinite(new_v_t)
        v_t.copy_(torch.where(ok, new_v_t, v_t))
        limit = tbso_flip_threshold(threshold, v_t, eps, outside)
        _eager_update_and_flip(w, shape, g, m, one_minus_beta1, limit, ok, False, noise, f, sk)


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


def _noises_for(noises: list[Tensor | None], grads: Sequence[Tensor], fused: bool) -> list[Tensor | None]:
    """The compiled step takes full-size rounding noise (a repeated row reshaped inside the graph does not lower)."""
    if not fused:
        return noises
    return [n if n is None or n.numel() == g.numel() else n.repeat(-(-g.numel() // n.numel()))[: g.numel()]
            for n, g in zip(noises, grads)]


def _scalar(value: float, device: torch.device) -> Tensor:
    # torch.full, not torch.tensor: on CUDA a tensor built from Python data is a blocking copy (a host sync)
    return torch.full((), value, dtype=torch.float32, device=device)


def bso(weights: Sequence[Tensor], grads: Sequence[Tensor], momenta: Sequence[Tensor], last_flips: Sequence[Tensor],
        nonfinite_steps: Sequence[Tensor], *, beta: float, threshold: float, reset_momentum_on_flip: bool = False,
        rounding_noise: Sequence[Tensor | None] | None = None, fused: bool = False) -> None:
    """BSO (Eq. 11–12) on tensors of one device; updates weights and state in place."""
    if not weights:
        return
    device = grads[0].device
    data, shapes = _storage(weights)
    noises = _noises_for(list(rounding_noise) if rounding_noise is not None else [None] * len(data), grads, fused)
    impl = _compiled_fn("bso") if fused else _eager_bso_tensors
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
    noises = _noises_for(list(rounding_noise) if rounding_noise is not None else [None] * len(data), grads, fused)
    impl = _compiled_fn("tbso") if fused else _eager_tbso_tensors
    impl(data, shapes, list(grads), list(momenta), list(vs),
         torch.full((1,), time_step, dtype=torch.int64, device=device) if fused else time_step,
         list(last_flips), list(nonfinite_steps), noises, _scalar(1.0 - betas[0], device), _scalar(betas[1], device),
         _scalar(1.0 - betas[1], device), _scalar(threshold, device), _scalar(eps, device),
         eps_placement == "outside")
