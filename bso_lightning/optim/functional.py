"""The BSO and T-BSO updates (paper Eq. 11–14), written once.

:func:`bso` and :func:`tbso` are the functional forms (as ``torch.optim.sgd.sgd``): lists of weights, gradients
and state in, everything updated in place. The update of one tensor is one function, :func:`_step_tensor_` (over
:func:`_update_chunk_`), written with ``out=`` buffers. Both paths run it, chosen in one ``if``
(:func:`_implementation`): the eager step calls it directly, chunk by chunk, with buffers reused across chunks and
tensors and a float32 momentum updated where it lies; ``fused=True`` is ``torch.compile`` of the same function over
whole tensors, its buffers becoming the compiler's temporaries and the state written last. The compiled momentum
may differ from the eager one in the last bit of float32 rounding; the flips and counters are the same.

Per binary tensor W (±1, dense or packed as bits), gradient G and momentum M::

    BSO    M ← β·M + (1 − β)·G                                  (Eq. 11)
           W ← −W where W·M > γ                                 (Eq. 12)
    T-BSO  M ← β1·M + (1 − β1)·G,  v[t] ← β2·v[t] + (1 − β2)·mean(G²)   (Eq. 13)
           W ← −W where W·M > γ·sqrt(v[t] + ε)                  (Eq. 14; ``eps_placement="inside"``, the paper)
           W ← −W where W·M / (sqrt(v[t]) + ε) > γ              (``eps_placement="outside"``, the authors' code)

A tensor whose gradient is not finite — NaN/Inf, or ‖G‖² overflowing float32 (|G| ≳ 1.8e19) — is left untouched
(weights and state) and counted in ``nonfinite_steps``; so M stays finite: |M| ≤ max |G| of the steps taken.
Everything is tensor code without a host-device sync (the "ok" decision is a 0-dim bool tensor).

The momentum is stored in float32, bfloat16 or int8. The update is always computed in float32:

* bfloat16: stored by stochastic rounding (``rounding_noise``: uniform 16-bit integers, one per entry): with
  β = 1 − 1e-3 the update (1 − β)·(G − M) is far below bfloat16's resolution, and round-to-nearest would stall M
  (``rounding_noise=None`` does exactly that; tests/optim/test_momentum_dtype.py).
* int8: block-wise absmax quantisation (as the 8-bit optimizers of bitsandbytes): per block of ``QUANT_BLOCK``
  entries one float32 scale s = max|M| / 127 and codes q = M / s rounded stochastically to an integer in
  [−127, 127] (up with probability equal to the fractional part: unbiased), M = q·s. 1 byte + 4 / ``QUANT_BLOCK``
  bytes per weight.

The eager step works through each tensor in chunks of ``EAGER_CHUNK`` entries with every temporary written into
buffers reused across chunks and tensors (``out=``), freed when the call returns: nothing of it persists between
steps, and while it runs it holds at most ~9.5 bytes × ``EAGER_CHUNK`` (4.75 MiB: the buffers, and the int32 byte
index of an unpacked chunk), whatever the layer sizes.
(Measured on CPU, ``benchmarks/step_throughput.py --compare-with``: as fast as whole-tensor passes with buffers kept
for good; chunks of 32768 entries kept for good were 1.5–2× slower, the Python overhead per chunk dominating.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from bso_lightning.nn.packed import PackedBinaryParameter, pack_bits, unpack_signs

__all__ = ["bso", "tbso", "stochastic_round_to_bfloat16", "quantize_int8_", "dequantize_int8", "tbso_flip_threshold",
           "workspace_bytes", "EPS_PLACEMENTS", "QUANT_BLOCK", "NOISE_WIDTH", "EAGER_CHUNK"]

EPS_PLACEMENTS = ("inside", "outside")
#: Entries per block of an int8 momentum (one float32 scale each: 4 / 256 = 0.016 byte per weight).
QUANT_BLOCK = 256
#: Length of the random row that stochastic rounding repeats over a tensor (see ``BinaryOptimizer._rounding_noise``).
NOISE_WIDTH = 4096
#: Entries per chunk of the eager step (a multiple of ``NOISE_WIDTH``, ``QUANT_BLOCK`` and 8, so chunking changes
#: no result). ``None``: whole tensors, with buffers the size of the largest one.
EAGER_CHUNK: int | None = 1 << 19


# --------------------------------------------------------------------------- momentum storage (shared)

def _add_repeated_(flat: Tensor, values: Tensor) -> Tensor:
    """``flat`` (1-d) += ``values``, shaped like it (same number of entries) or a row repeated over it."""
    if values.numel() == flat.numel():
        return flat.add_(values.reshape(-1))
    width = values.numel()
    whole = flat.numel() // width * width
    flat[:whole].view(-1, width).add_(values)
    flat[whole:].add_(values[: flat.numel() - whole])
    return flat


def stochastic_round_to_bfloat16(x: Tensor, noise: Tensor) -> Tensor:
    """Round float32 ``x`` to bfloat16, up with probability equal to the dropped fraction (unbiased).

    ``noise``: int32 in [0, 2**16), either shaped like ``x`` or a row that is repeated over ``x``'s entries
    (flattened). Adds it to the 16 low bits of x's bit pattern and truncates. ``x`` is overwritten.
    """
    bits = _add_repeated_(x.view(torch.int32).view(-1), noise)
    bits.bitwise_and_(-65536)  # -65536 == 0xFFFF0000 as int32: the bits bfloat16 keeps
    return x.to(torch.bfloat16)


def _blocks(flat: Tensor, scale: Tensor) -> list[tuple[Tensor, Tensor]]:
    """A flat tensor as [blocks, QUANT_BLOCK] (its whole blocks) and [1, rest] (a last, partial block), each with
    its scales [blocks]."""
    whole = flat.numel() // QUANT_BLOCK
    parts = [(flat[: whole * QUANT_BLOCK].view(-1, QUANT_BLOCK), scale[:whole])]
    if flat.numel() > whole * QUANT_BLOCK:
        parts.append((flat[whole * QUANT_BLOCK:].view(1, -1), scale[whole: whole + 1]))
    return parts


def dequantize_int8(q: Tensor, scale: Tensor, out: Tensor | None = None) -> Tensor:
    """The float32 momentum that int8 codes ``q`` and block scales ``scale`` hold: M = q·s (into ``out`` if given)."""
    flat = q.reshape(-1)
    if out is None:
        out = torch.empty(flat.shape, dtype=torch.float32, device=q.device)
    for (codes, s), (dest, _) in zip(_blocks(flat, scale), _blocks(out.view(-1), scale)):
        torch.mul(codes, s.unsqueeze(1), out=dest)
    return out.view(q.shape)


def quantize_int8_(x: Tensor, q: Tensor, scale: Tensor, noise: Tensor | None, ok: Tensor | None = None) -> None:
    """Store float32 ``x`` (overwritten) as int8 codes ``q`` and block scales ``scale`` (absmax / 127), in place.

    ``noise``: int32 in [0, 2**16), shaped like ``x`` or a row repeated over it: q = floor(x / s + noise / 2**16),
    which rounds up with probability equal to the fractional part (unbiased); ``None`` rounds to nearest. Where
    the 0-dim bool ``ok`` is false (``x`` is then the stored M) the scales are kept and the codes rounded to
    nearest: nothing changes.
    """
    flat = x.view(-1)
    for values, s in _blocks(flat, scale):
        # (amax and amin: on CPU each is ~13x faster than aminmax over rows of 256)
        absmax = torch.maximum(values.amax(dim=1), values.amin(dim=1).neg()) * (1.0 / 127.0)
        s.copy_(absmax if ok is None else torch.where(ok, absmax, s))
        values.mul_(torch.where(s > 0, s.reciprocal(), 0.0).unsqueeze(1))
    if noise is None:
        flat.add_(0.5)
    else:
        u = noise.to(torch.float32) * 2.0 ** -16
        _add_repeated_(flat, u if ok is None else torch.where(ok, u, 0.5))
    flat.floor_().clamp_(-127.0, 127.0)
    q.view(-1).copy_(flat)


def _momentum_as_float32(m: Tensor, scale: Tensor | None, out: Tensor | None = None) -> Tensor:
    """The momentum in float32 (a new tensor, or ``out``): a copy, or the int8 codes times their block scales."""
    if scale is not None:
        return dequantize_int8(m, scale, out)
    return m.to(torch.float32, copy=True) if out is None else out.copy_(m.reshape(out.shape))


def _store_momentum_(m: Tensor, new_m: Tensor, noise: Tensor | None, scale: Tensor | None = None,
                     ok: Tensor | None = None) -> None:
    """Write the float32 ``new_m`` into the state ``m``: float32 as is; bfloat16 by stochastic rounding if ``noise``;
    int8 (``scale`` given) block-wise with stochastic rounding. May overwrite ``new_m``."""
    if scale is not None:
        quantize_int8_(new_m, m, scale, noise, ok)
    elif m.dtype == torch.float32 or noise is None:
        m.copy_(new_m.reshape(m.shape))  # (bfloat16 without noise: round to nearest, which stalls; kept to show it)
    else:
        m.copy_(stochastic_round_to_bfloat16(new_m, noise).reshape(m.shape))


def int8_scale_size(numel: int) -> int:
    """Number of block scales of an int8 momentum of ``numel`` entries."""
    return math.ceil(numel / QUANT_BLOCK)


# --------------------------------------------------------------------------- the update, once

def tbso_flip_threshold(threshold: Tensor | float, v_t: Tensor, eps: Tensor | float, outside: bool) -> Tensor:
    """The T-BSO flip threshold on W·M: γ·sqrt(v[t] + ε) (Eq. 14) or, ``outside``, γ·(sqrt(v[t]) + ε)."""
    return threshold * (torch.sqrt(v_t) + eps) if outside else threshold * torch.sqrt(v_t + eps)


class _Adaptive(NamedTuple):
    """T-BSO's per-time-step gradient scale (Eq. 13–14); BSO has none. Scalars are 0-dim float32 tensors."""

    v: Tensor  # float32 [≥ t + 1]
    time_step: Tensor  # int64 [1] (a tensor, so t does not recompile)
    beta2: Tensor
    one_minus_beta2: Tensor
    eps: Tensor
    outside: bool


def _limit_and_ok(flat_g: Tensor, threshold: Tensor, adaptive: _Adaptive | None) -> tuple[Tensor, Tensor]:
    """The flip limit on W·M — γ (Eq. 12) or γ·sqrt(v[t] + ε) after v[t] ← β2·v[t] + (1 − β2)·mean(G²) (Eq. 13–14,
    v in place) — and ``ok``, the one finiteness check: a 0-dim bool, false exactly when G holds NaN/Inf or ‖G‖²
    overflows float32 (then v[t] is left as it was)."""
    statistic = torch.dot(flat_g, flat_g)
    if adaptive is not None:
        v_t = adaptive.v.index_select(0, adaptive.time_step).reshape(())
        statistic = v_t * adaptive.beta2 + statistic * (adaptive.one_minus_beta2 / flat_g.numel())
    ok = torch.isfinite(statistic)
    if adaptive is None:
        return threshold, ok
    v_t = torch.where(ok, statistic, v_t)
    adaptive.v.index_copy_(0, adaptive.time_step, v_t.reshape(1))
    return tbso_flip_threshold(threshold, v_t, adaptive.eps, adaptive.outside), ok


#: Buffers of the update: ``f32`` (G, then W·M and the flips), ``m32`` (a bfloat16/int8 momentum in float32);
#: packed weights: ``signs`` (W unpacked, padded to whole bytes; the eager step's is ``f32`` itself) and ``u8``
#: (the flips, padded).
_BUFFER_DTYPES = {"f32": torch.float32, "m32": torch.float32, "signs": torch.float32, "u8": torch.uint8}
Buffers = Callable[[torch.device, int, tuple[str, ...]], dict[str, Tensor]]


def _fresh_buffers(device: torch.device, numel: int, names: tuple[str, ...]) -> dict[str, Tensor]:
    """New buffers (under ``torch.compile``: the compiler's temporaries): ``f32`` of exactly ``numel`` entries,
    the packed ones padded to whole bytes, and no ``m32`` (the momentum in float32 is then a new tensor). (With an
    int8 momentum, float32 values written into part of a padded buffer, or its blocks written into a buffer, made
    inductor's C++ code fail to compile; torch 2.11.)"""
    padded = (numel + 7) // 8 * 8
    return {name: torch.empty(numel if name == "f32" else padded, dtype=_BUFFER_DTYPES[name], device=device)
            for name in names if name != "m32"}


def _update_chunk_(w: Tensor, packed: bool, g: Tensor, m: Tensor, scale: Tensor | None, noise: Tensor | None,
                   weight: Tensor, limit: Tensor, ok: Tensor, reset: bool, in_place: bool, buffers: dict[str, Tensor],
                   start: int, stop: int) -> Tensor:
    """Eq. 11/13 then 12/14 on entries [start, stop) of the flat W (packed: its bits; ``start`` a multiple of 8 and
    of ``QUANT_BLOCK``), G and M, every temporary in ``buffers``; returns the number of flips (0-dim).

    The state is written last (the weights after the momentum), except that with ``in_place`` a float32 momentum
    is updated where it lies (the eager step: no copy). ``weight`` is (1 − β) or 0 (not ``ok``: M unchanged).
    """
    k = stop - start
    s = torch.nan_to_num(g[start:stop], 0.0, 0.0, 0.0, out=buffers["f32"][:k])
    m_chunk = m[start:stop]
    scale = None if scale is None else scale[start // QUANT_BLOCK: -(-stop // QUANT_BLOCK)]
    in_place = in_place and m.dtype == torch.float32
    if in_place:
        new_m = m_chunk.lerp_(s, weight)  # M ← β·M + (1 − β)·G (Eq. 11 / 13)
    else:
        m32 = buffers["m32"][:k] if "m32" in buffers else None
        new_m = _momentum_as_float32(m_chunk, scale, out=m32).lerp_(s, weight)
    if packed:
        padded = (k + 7) // 8 * 8
        bits = w[start // 8: (start + padded) // 8]
        signs = unpack_signs(bits, (k,), out=buffers["signs"][:padded])  # (eager: in G's buffer, no longer needed)
    else:
        signs = w[start:stop]
    flip = torch.gt(torch.mul(signs, new_m, out=s), limit, out=s)  # 1.0 where W·M > limit (Eq. 12 / 14)
    if reset:
        new_m.addcmul_(new_m, flip, value=-1.0)  # M ← 0 where flipped
    if not in_place:
        _store_momentum_(m_chunk, new_m, noise, scale, ok)
    flips = flip.sum()  # (exact: a float32 sum of 0/1 is exact below 2**24 flips)
    if packed:
        mask = buffers["u8"][:padded]
        mask[:k].copy_(flip)
        mask[k:].zero_()
        bits.bitwise_xor_(pack_bits(mask))  # W ← −W where flipped: one XOR per 8 weights
    else:
        signs.addcmul_(signs, flip, value=-2.0)  # W ← −W where flipped (never sign(0))
    return flips


def _step_tensor_(w: Tensor, shape: torch.Size | None, g: Tensor, m: Tensor, scale: Tensor | None,
                  noise: Tensor | None, last_flips: Tensor, nonfinite_steps: Tensor, one_minus_beta: Tensor,
                  threshold: Tensor, reset: bool, adaptive: _Adaptive | None, chunk: int | None, buffers: Buffers,
                  in_place: bool) -> None:
    """BSO (Eq. 11–12; ``adaptive`` None) or T-BSO (Eq. 13–14) on one binary tensor W (dense, or packed bits of
    logical ``shape``), in place, ``chunk`` entries at a time (None: whole) — the one definition of the update.
    (A dense W that is not contiguous is updated through a contiguous copy.)

    A tensor whose gradient is not finite is left as it was (the momentum's weight becomes 0, the limit ∞) and
    counted in ``nonfinite_steps``.
    """
    if shape is None and not w.is_contiguous():  # e.g. channels_last: work on a copy
        dense = w.contiguous()
        _step_tensor_(dense.view(-1), None, g, m, scale, noise, last_flips, nonfinite_steps, one_minus_beta,
                      threshold, reset, adaptive, chunk, buffers, in_place)
        w.copy_(dense)
        return
    flat_g = g.to(torch.float32).reshape(-1)
    limit, ok = _limit_and_ok(flat_g, threshold, adaptive)
    weight = ok.to(torch.float32) * one_minus_beta
    limit_if_ok = torch.where(ok, limit, torch.inf)
    n = flat_g.numel()
    step = n if chunk is None else min(n, chunk)
    names = ("f32",) + (("m32",) if m.dtype != torch.float32 or not in_place else ()) + \
        (("signs", "u8") if shape is not None else ())
    work = buffers(g.device, step, names)
    last_flips.zero_()
    for start in [0] if chunk is None else range(0, n, step):
        flips = _update_chunk_(w.view(-1), shape is not None, flat_g, m.view(-1), scale, noise, weight,
                               limit_if_ok, ok, reset, in_place, work, start, min(start + step, n))
        last_flips.add_(flips.to(torch.int64))
    nonfinite_steps.add_((~ok).to(torch.int64))


def _bso_tensors(ws, shapes, gs, ms, scales, flips, skips, noises, one_minus_beta, threshold, reset, *,
                 chunk: int | None = None, buffers: Buffers = _fresh_buffers, in_place: bool = False) -> None:
    """BSO over a list of tensors: as ``fused=True`` compiles it (whole tensors, state written last); the eager step
    passes ``chunk``, reused buffers and ``in_place``."""
    for w, shape, g, m, sc, f, sk, noise in zip(ws, shapes, gs, ms, scales, flips, skips, noises):
        _step_tensor_(w, shape, g, m, sc, noise, f, sk, one_minus_beta, threshold, reset, None, chunk, buffers,
                      in_place)


def _tbso_tensors(ws, shapes, gs, ms, scales, vs, time_step, flips, skips, noises, one_minus_beta1, beta2,
                  one_minus_beta2, threshold, eps, outside, *, chunk: int | None = None,
                  buffers: Buffers = _fresh_buffers, in_place: bool = False) -> None:
    """T-BSO over a list of tensors (as :func:`_bso_tensors`)."""
    for w, shape, g, m, sc, v, f, sk, noise in zip(ws, shapes, gs, ms, scales, vs, flips, skips, noises):
        adaptive = _Adaptive(v, time_step, beta2, one_minus_beta2, eps, outside)
        _step_tensor_(w, shape, g, m, sc, noise, f, sk, one_minus_beta1, threshold, False, adaptive, chunk, buffers,
                      in_place)


# --------------------------------------------------------------------------- eager: chunks, reused buffers

_workspaces: dict[torch.device, dict[str, Tensor]] = {}


def _workspace(device: torch.device, numel: int, names: tuple[str, ...]) -> dict[str, Tensor]:
    """Buffers for chunks of up to ``numel`` entries, reused across chunks and tensors, grown on demand."""
    ws = _workspaces.setdefault(device, {})
    padded = (numel + 7) // 8 * 8
    for name in names:
        if name != "signs" and (name not in ws or ws[name].numel() < padded):
            ws[name] = torch.empty(padded, dtype=_BUFFER_DTYPES[name], device=device)  # (written before read)
    return {**ws, "signs": ws["f32"]}  # (the unpacked W overwrites G, no longer needed: 4 bytes per entry less)


def workspace_bytes(device: torch.device | str | None = None) -> int:
    """Bytes the eager step's reused buffers hold now (on ``device``, or on every device): 0 between steps."""
    devices = _workspaces.values() if device is None else [_workspaces.get(torch.device(device), {})]
    return sum(t.numel() * t.element_size() for ws in devices for t in ws.values())


def _eager(fn: Callable[..., None], device: torch.device) -> Callable[..., None]:
    """``fn`` (:func:`_bso_tensors` / :func:`_tbso_tensors`) run eagerly on tensors of ``device``, in chunks of
    ``EAGER_CHUNK`` entries with reused buffers, freed when it returns."""
    def call(*args: object) -> None:
        try:
            fn(*args, chunk=EAGER_CHUNK, buffers=_workspace, in_place=True)
        finally:
            _workspaces.pop(device, None)

    return call


# --------------------------------------------------------------------------- compiled: the same functions

#: Compiled variants (list lengths, dtypes, shapes, devices, options) one process may hold; past this, dynamo
#: runs the functions as plain Python (the same results, unfused) with a warning.
RECOMPILE_LIMIT = 64
_compiled: dict[str, Callable[..., None]] = {}


def _flat(weights: list[Tensor]) -> list[Tensor]:
    """The weights flattened (a dense one that is not contiguous: as it is). Given flat tensors, the compiled step
    runs one loop per tensor: on 4-d tensors inductor (CPU) mis-fused a bfloat16 gradient's momentum update with
    the flat reads that followed it (wrong flips)."""
    return [w.view(-1) if w.is_contiguous() else w for w in weights]


def _compiled_fn(name: str) -> Callable[..., None]:
    """``torch.compile`` of :func:`_bso_tensors` / :func:`_tbso_tensors` (whole tensors; the buffers become the
    compiler's temporaries), built on first use (takes seconds)."""
    if name not in _compiled:
        fn = {"bso": _bso_tensors, "tbso": _tbso_tensors}[name]
        compiled = torch.compile(fn, dynamic=None)

        def static_shapes(*args: object) -> None:  # (its own frame: dynamo keeps its compiled code apart)
            fn(*args)

        # an int8 momentum's blocks ([n / 256, 256] views) fail to lower in inductor once sizes become symbolic
        # (LoweringException in aten.reshape): compiled for fixed shapes, one variant per set of tensor sizes
        compiled_static = torch.compile(static_shapes, dynamic=False)

        def call(ws: list[Tensor], shapes: list, gs: list[Tensor], ms: list[Tensor], *args: object) -> None:
            int8 = any(scale is not None for scale in args[0])  # (args[0]: the momentum scales)
            flat = _flat(ws), shapes, [g.reshape(-1) for g in gs], [m.view(-1) for m in ms]
            with torch._dynamo.config.patch(recompile_limit=RECOMPILE_LIMIT):
                (compiled_static if int8 else compiled)(*flat, *args)

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


def _per_tensor(values: Sequence[Tensor | None] | None, count: int, name: str) -> list[Tensor | None]:
    """An optional per-tensor list (None: None for every tensor), checked for its length."""
    if values is None:
        return [None] * count
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} weights")
    return list(values)


def _check_int8(momenta: Sequence[Tensor], scales: list[Tensor | None]) -> None:
    for index, (m, scale) in enumerate(zip(momenta, scales)):
        if (m.dtype == torch.int8) != (scale is not None):
            raise ValueError(f"momentum {index} ({m.dtype}): an int8 momentum needs its block scales "
                             "(momentum_scales) and only an int8 momentum has them")
        if scale is not None and scale.numel() != int8_scale_size(m.numel()):
            raise ValueError(f"momentum_scales[{index}] has {scale.numel()} entries; {m.numel()} int8 entries "
                             f"need {int8_scale_size(m.numel())} (blocks of {QUANT_BLOCK})")


def _scalar(value: float, device: torch.device) -> Tensor:
    # torch.full, not torch.tensor: on CUDA a tensor built from Python data is a blocking copy (a host sync)
    return torch.full((), value, dtype=torch.float32, device=device)


def _prepared(weights: Sequence[Tensor], grads: Sequence[Tensor], momenta: Sequence[Tensor],
              rounding_noise: Sequence[Tensor | None] | None, momentum_scales: Sequence[Tensor | None] | None,
              fused: bool) -> tuple[list[Tensor], list[torch.Size | None], list[Tensor], list[Tensor],
                                    list[Tensor | None], list[Tensor | None]]:
    """Weights (:func:`_storage`), logical shapes, gradients, momenta, int8 scales (checked) and rounding noise of
    one call, for either path."""
    data, shapes = _storage(weights)
    scales = _per_tensor(momentum_scales, len(data), "momentum_scales")
    _check_int8(momenta, scales)
    noises = _noises_for(_per_tensor(rounding_noise, len(data), "rounding_noise"), grads, fused)
    return data, shapes, list(grads), list(momenta), scales, noises


def _implementation(name: str, fused: bool, device: torch.device) -> Callable[..., None]:
    """:func:`_bso_tensors` / :func:`_tbso_tensors` compiled (``fused``) or run eagerly: the one choice of path."""
    return _compiled_fn(name) if fused else _eager({"bso": _bso_tensors, "tbso": _tbso_tensors}[name], device)


def bso(weights: Sequence[Tensor], grads: Sequence[Tensor], momenta: Sequence[Tensor], last_flips: Sequence[Tensor],
        nonfinite_steps: Sequence[Tensor], *, beta: float, threshold: float, reset_momentum_on_flip: bool = False,
        rounding_noise: Sequence[Tensor | None] | None = None,
        momentum_scales: Sequence[Tensor | None] | None = None, fused: bool = False) -> None:
    """BSO (Eq. 11–12) on tensors of one device; updates weights and state in place.

    ``momentum_scales``: per tensor, the float32 block scales of an int8 momentum (None for the others)."""
    if not weights:
        return
    device = grads[0].device
    data, shapes, grads, momenta, scales, noises = _prepared(weights, grads, momenta, rounding_noise,
                                                             momentum_scales, fused)
    _implementation("bso", fused, device)(
        data, shapes, grads, momenta, scales, list(last_flips), list(nonfinite_steps), noises,
        _scalar(1.0 - beta, device), _scalar(threshold, device), bool(reset_momentum_on_flip))


def tbso(weights: Sequence[Tensor], grads: Sequence[Tensor], momenta: Sequence[Tensor], vs: Sequence[Tensor],
         last_flips: Sequence[Tensor], nonfinite_steps: Sequence[Tensor], *, time_step: int,
         betas: tuple[float, float], threshold: float, eps: float, eps_placement: str = "inside",
         rounding_noise: Sequence[Tensor | None] | None = None,
         momentum_scales: Sequence[Tensor | None] | None = None, fused: bool = False) -> None:
    """T-BSO (Eq. 13–14) for time step ``time_step`` on tensors of one device; ``vs`` hold ≥ t + 1 entries.

    ``momentum_scales``: as in :func:`bso`."""
    if not weights:
        return
    if eps_placement not in EPS_PLACEMENTS:
        raise ValueError(f"eps_placement must be one of {EPS_PLACEMENTS}, got {eps_placement!r}")
    device = grads[0].device
    data, shapes, grads, momenta, scales, noises = _prepared(weights, grads, momenta, rounding_noise,
                                                             momentum_scales, fused)
    _implementation("tbso", fused, device)(
        data, shapes, grads, momenta, scales, list(vs),
        torch.full((1,), time_step, dtype=torch.int64, device=device), list(last_flips), list(nonfinite_steps),
        noises, _scalar(1.0 - betas[0], device), _scalar(betas[1], device), _scalar(1.0 - betas[1], device),
        _scalar(threshold, device), _scalar(eps, device), eps_placement == "outside")
