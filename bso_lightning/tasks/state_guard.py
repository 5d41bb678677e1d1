"""Finiteness of the trained state: a NaN/Inf weight or BatchNorm statistic stops the run, naming it.

The ``nonfinite`` policy (:mod:`bso_lightning.tasks.faults`) keeps NaN/Inf *inputs* and *gradients* out of
the updates. The state can still overflow from finite values (e.g. inputs × 1e30, or ``lr = 1e30``: the
BatchNorm ``running_var`` and the classifier reach ``inf``). That is never skipped or repaired: a state that
overflowed once overflows again from the same settings, and restoring it would hide a broken run. So, with
either policy:

* after every training batch (:meth:`StateGuard.check`, from ``on_train_batch_end``): one fused max-abs
  reduction over the guarded tensors and **one host sync per batch** (none per time step or optimizer step),
  under DDP one ``all_reduce`` of the flag; a non-finite tensor raises :class:`NonFiniteStateError` naming
  every such tensor, the epoch, the batch and ``global_step``;
* before a checkpoint is written (``on_save_checkpoint``): the same check, so a checkpoint with non-finite
  tensors is never written (the error says so);
* when a checkpoint is loaded (``on_load_checkpoint``): its model tensors are checked too.

Guarded: the full-precision parameters (first conv, BatchNorm affine, classifier; every parameter of a
baseline) and the floating-point buffers (BatchNorm running statistics) — binary weights are ±1 by
construction (BSO/T-BSO only flip signs) and are not scanned.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import torch
from torch import Tensor, nn

from bso_lightning.checkpoints import check_loaded_state  # noqa: F401 - (a loaded state_dict: NaN/Inf refused)
from bso_lightning.tasks.faults import NonFiniteError, all_finite, describe_nonfinite


class NonFiniteStateError(NonFiniteError):
    """A trained parameter or BatchNorm statistic became NaN/Inf (the run stops; nothing is saved)."""


def guarded_tensors(model: nn.Module, binary: Iterable[Tensor] = (), prefix: str = "") -> list[tuple[str, Tensor]]:
    """``(name, tensor)`` of every floating-point parameter (except the ``binary`` ones) and buffer of ``model``."""
    skip = {id(p) for p in binary}
    named = [(prefix + n, p) for n, p in model.named_parameters() if id(p) not in skip]
    named += [(prefix + n, b) for n, b in model.named_buffers()]
    return [(n, t) for n, t in named if t.is_floating_point() and t.numel() > 0]


def nonfinite_entries(named: Iterable[tuple[str, Any]]) -> list[str]:
    """``"name (k NaN and j Inf of n values)"`` for each non-finite tensor (host syncs: error path only)."""
    return [f"{name} ({describe_nonfinite(t)})" for name, t in named
            if isinstance(t, Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


class StateGuard:
    """Checks a fixed list of named tensors for NaN/Inf with one fused reduction (:func:`all_finite`)."""

    def __init__(self, named: list[tuple[str, Tensor]]) -> None:
        self.named = named

    def ok(self) -> Tensor:
        """0-dim bool tensor on the tensors' device: all finite (no host sync)."""
        return all_finite([t for _, t in self.named])

    def check(self, where: str, strategy: Optional[Any] = None, saving: bool = False) -> None:
        """Raise :class:`NonFiniteStateError` naming the non-finite tensors (one host sync; with a Lightning
        ``strategy``, every process raises if one does)."""
        local_bad = not bool(self.ok())
        bad = strategy.reduce_boolean_decision(local_bad, all=False) if strategy is not None else local_bad
        if not bad:
            return
        culprits = ", ".join(nonfinite_entries(self.named)) if local_bad else "a tensor of another process"
        consequence = "the checkpoint was not written" if saving else "training stopped; no checkpoint of this state"
        raise NonFiniteStateError(
            f"{where}: the trained state is not finite: {culprits}; {consequence}. Usual causes: a learning rate "
            "or input scale far too large (the values overflowed float range). `nonfinite='skip'` covers NaN/Inf "
            "inputs and gradients only; a non-finite state always stops the run.")
