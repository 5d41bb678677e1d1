"""Tensors saved for the backward, stored in bfloat16 (the activations part of the training peak, issue 12).

Within one online time step autograd keeps, per layer, the presynaptic trace (for the weight gradient), the
BatchNorm input and the surrogate's input. :func:`compact_saved_activations` stores the large float32 ones in
bfloat16 while the graph lives and gives them back as float32 to the backward, halving what they hold.

What it costs: the OTTT trace with λ = 0.5 is a dyadic rational with at most T significant bits, so it is exact in
bfloat16 for T ≤ 8; the BatchNorm and surrogate inputs are rounded (8 significant bits), which perturbs the
gradient slightly (accuracy measured in ``benchmarks/packed_memory.py``). Spikes are never saved (the trace op
saves the trace instead), so there is nothing binary left to store as bits. Parameters (leaf tensors that
require grad) are left as they are.

Kept as our own code because torch's ``saved_tensors_hooks`` is the mechanism; no library ships this policy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["SAVED_ACTIVATION_DTYPES", "compact_saved_activations"]

SAVED_ACTIVATION_DTYPES = ("float32", "bfloat16")
#: Smaller saved tensors (BatchNorm statistics, scalars) are left in float32: not worth a conversion.
MIN_NUMEL = 4096


def _compact(t: Tensor):
    if t.dtype == torch.float32 and t.numel() >= MIN_NUMEL and not (t.is_leaf and t.requires_grad):
        return ("bf16", t.to(torch.bfloat16))
    return ("keep", t)


def _restore(packed) -> Tensor:
    kind, t = packed
    return t.to(torch.float32) if kind == "bf16" else t


@contextlib.contextmanager
def compact_saved_activations(dtype: str = "bfloat16") -> Iterator[None]:
    """Inside, large float32 tensors saved for the backward are held in ``dtype`` (``float32``: no change).

    Hooks already installed around it (e.g. :class:`~bso_lightning.callbacks.memory.AutogradMemoryMeter`) still
    see every saved tensor, in its compact form: autograd only calls the innermost pair, so this one chains them.
    """
    if dtype not in SAVED_ACTIVATION_DTYPES:
        raise ValueError(f"saved_activation_dtype must be one of {SAVED_ACTIVATION_DTYPES}, got {dtype!r}")
    if dtype == "float32":
        yield
        return
    outer = torch._C._autograd._top_saved_tensors_default_hooks(False)  # (pack, unpack) or None

    if outer is None:
        pack, unpack = _compact, _restore
    else:
        outer_pack, outer_unpack = outer

        def pack(t: Tensor):
            kind, stored = _compact(t)
            return kind, outer_pack(stored)

        def unpack(packed) -> Tensor:
            kind, stored = packed
            return _restore((kind, outer_unpack(stored)))

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield
