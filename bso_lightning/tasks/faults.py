"""Faults during training: non-finite inputs and gradients.

Non-finite values (``OnlineClassifier(loop=OnlineLoop(nonfinite=...))``; :class:`NonFiniteHandler` applies them):

* ``"skip"`` (default): a batch whose input holds NaN/Inf is dropped before the forward pass (a
  :class:`NonFiniteWarning` names it; one host sync per batch for that decision). A non-finite gradient
  changes nothing: BSO/T-BSO leave such a tensor as it is (no flip, momentum unchanged, counted in
  ``nonfinite_counts()``) and the SGD step of the full-precision parameters is undone on the device
  (:func:`step_if`), without a host sync.
* ``"raise"``: stop with :class:`NonFiniteError`, naming the batch, the time step and what was not
  finite, before anything is updated (one host sync per batch and per time step).

Per epoch: :func:`report_skipped_batches` (one summary of the dropped batches; an error when an epoch dropped all
of them or more than ``max_skipped_fraction``); :class:`EvaluationInputs` (NaN/Inf inputs of a validation/test
run). The trained state itself: :mod:`bso_lightning.tasks.state_guard`.

Checkpoints (reading, compatibility, size bounds) live in :mod:`bso_lightning.checkpoints`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

from bso_lightning.nn.packed import binary_grad, is_packed


class NonFiniteError(FloatingPointError):
    """An input or gradient held NaN/Inf and ``nonfinite="raise"``."""


class NonFiniteWarning(RuntimeWarning):
    """A batch was skipped because its input held NaN/Inf (``nonfinite="skip"``)."""


# --------------------------------------------------------------------------- non-finite values


def all_finite(tensors: Sequence[Tensor]) -> Tensor:
    """0-dim bool tensor: every element of every tensor is finite (no host sync).

    One fused max-abs reduction per device and dtype (``torch._foreach_norm`` with ``ord=inf``
    propagates NaN and Inf), then a single ``isfinite`` over the per-tensor results.
    """
    tensors = [t for t in tensors if t.numel() > 0]
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    device = tensors[0].device
    norms = torch._foreach_norm([t.detach() for t in tensors], float("inf"))
    return torch.isfinite(torch.stack([n.to(device=device, dtype=torch.float32) for n in norms])).all()


def describe_nonfinite(tensor: Tensor) -> str:
    """``"3 NaN and 1 Inf of 512 values"`` (host sync: for error messages only)."""
    nan = int(torch.isnan(tensor).sum())
    inf = int(torch.isinf(tensor).sum())
    return f"{nan} NaN and {inf} Inf of {tensor.numel()} values"


def nonfinite_gradients(named_params: Iterable[tuple[str, Tensor]]) -> list[str]:
    """Names (with a count) of the parameters whose gradient holds NaN/Inf (host syncs: error path only); a packed
    binary weight is named as its dense weight (``model.3.weight``) with the gradient its layer handed over."""
    named_grads = ((name.removesuffix("_bits") if is_packed(p) else name, binary_grad(p)) for name, p in named_params)
    return [f"{name} ({describe_nonfinite(g)})" for name, g in named_grads
            if g is not None and not bool(torch.isfinite(g).all())]


def report_skipped_batches(epoch: int, skipped: Sequence[str], seen: int, max_fraction: float) -> None:
    """End of a training epoch under ``nonfinite="skip"``: one :class:`NonFiniteWarning` summarising the dropped
    batches (``skipped``: one ``"batch i: why"`` each, of ``seen``); :class:`NonFiniteError` instead if the epoch
    dropped all of its batches or more than ``max_fraction`` of them."""
    if not skipped:
        return
    shown = "; ".join(skipped[:3]) + (f"; ... and {len(skipped) - 3} more" if len(skipped) > 3 else "")
    message = f"epoch {epoch}: skipped {len(skipped)} of {seen} training batches whose input held NaN/Inf ({shown})"
    if len(skipped) >= seen or len(skipped) > max_fraction * seen:
        limit = "every batch" if len(skipped) >= seen else f"more than max_skipped_fraction={max_fraction}"
        raise NonFiniteError(f"{message}: {limit} of the epoch was dropped, so the data (or its transform) is broken; "
                             "fix it, or raise max_skipped_fraction if such batches are expected")
    warnings.warn(f"{message} (nonfinite='skip')", NonFiniteWarning, stacklevel=2)


class EvaluationInputs:
    """Counts evaluation samples whose input holds NaN/Inf on the device (no host sync per batch); :meth:`report`
    once per epoch: a :class:`NonFiniteWarning`, or :class:`NonFiniteError` if every sample was non-finite (the
    accuracy would be a meaningless chance figure)."""

    def __init__(self) -> None:
        self.bad: Optional[Tensor] = None
        self.seen = 0

    def update(self, x: Tensor) -> None:
        flags = ~torch.isfinite(x.detach().flatten(1) if x.dim() > 1 else x.detach()[:, None]).all(1)
        self.bad = flags.sum() if self.bad is None else self.bad + flags.sum()
        self.seen += len(x)

    def report(self, stage: str, epoch: int) -> None:
        bad, seen = (0 if self.bad is None else int(self.bad)), self.seen  # one host sync per epoch
        self.bad, self.seen = None, 0
        if bad == 0:
            return
        message = (f"{stage} (epoch {epoch}): {bad} of {seen} samples held NaN/Inf inputs; their outputs are NaN, "
                   f"so {stage}/loss is NaN and their predictions are meaningless")
        if bad >= seen:
            raise NonFiniteError(f"{message}: every sample, so the data (or its transform) is broken")
        warnings.warn(message, NonFiniteWarning, stacklevel=2)


@torch.no_grad()
def step_if(optimizer: Any, ok: Tensor) -> None:
    """``optimizer.step()`` that changes nothing where the 0-dim bool ``ok`` is false, without a host sync.

    The gradients are zeroed when ``ok`` is false (so that the step itself stays finite), the optimizer
    steps, then parameters and state entries are put back with ``torch.where``; state entries the step
    created are zeroed. Exact for SGD: a zero momentum buffer acts as no buffer (with dampening 0).
    ``optimizer`` may be a ``LightningOptimizer``; its ``step()`` is called, so Lightning counts the step.
    Costs one copy of the parameters and their state: meant for the few full-precision parameters of a
    binary network.
    """
    inner = getattr(optimizer, "optimizer", optimizer)
    params = [p for group in inner.param_groups for p in group["params"] if p.grad is not None]
    for p in params:
        p.grad.copy_(torch.where(ok, p.grad, torch.zeros((), dtype=p.grad.dtype, device=p.grad.device)))
    saved = [p.detach().clone() for p in params]
    saved_state = [
        {k: v.detach().clone() for k, v in inner.state[p].items() if isinstance(v, Tensor)} if p in inner.state else {}
        for p in params
    ]
    optimizer.step()
    for p, old, old_state in zip(params, saved, saved_state):
        p.copy_(torch.where(ok, p, old))
        for key, value in inner.state[p].items():
            if isinstance(value, Tensor):
                value.copy_(torch.where(ok, value, old_state[key] if key in old_state else torch.zeros_like(value)))


class NonFiniteHandler(torch.nn.Module):
    """The online classifier's fault handling in one place: what a NaN/Inf input or gradient does during training.

    ``policy`` ``"skip"`` drops a batch whose input is not finite (:meth:`skip_batch`; one host sync per batch) and
    leaves an update with a non-finite gradient undone (:meth:`step`: BSO/T-BSO skip that tensor, the SGD step is
    undone on the device by :func:`step_if`); :meth:`end_batch` summarises the dropped batches once per epoch
    (:func:`report_skipped_batches`, ``max_skipped_fraction``). ``"raise"`` stops with :class:`NonFiniteError` naming
    the batch, the time step and the culprit. Counts (batches dropped, full-precision steps skipped) live in a
    buffer that moves with the module (no host sync to count; saved in checkpoints by the classifier).
    """

    def __init__(self, policy: str = "skip", max_skipped_fraction: float = 0.5) -> None:
        super().__init__()
        self.policy = policy
        self.max_skipped_fraction = max_skipped_fraction
        # [input batches skipped, full-precision steps skipped]
        self.register_buffer("counts", torch.zeros(2, dtype=torch.int64), persistent=False)
        self.start_epoch()

    def start_epoch(self) -> None:
        self._skipped: list[str] = []  # this epoch's dropped batches, summarised once at its end
        self._batches = 0

    def skip_batch(self, x: Tensor, where: str, strategy: Any) -> bool:
        """Whether to drop this batch (its input, or another process's, holds NaN/Inf); raises under ``"raise"``."""
        local = not bool(torch.isfinite(x).all())
        if not strategy.reduce_boolean_decision(local, all=False):
            return False
        what = f"its input holds {describe_nonfinite(x)}" if local else "the batch of another process holds NaN/Inf"
        if self.policy == "raise":
            raise NonFiniteError(f"{where}: {what} (nonfinite='raise'; nonfinite='skip' drops such batches)")
        self._skipped.append(f"{where.split(' of ')[0]}: {what}")
        self.counts[0] += 1
        return True

    def step(self, binary_opt: Any, fp_opt: Any, time_step: int, where: str, model: torch.nn.Module,
             full_precision: Sequence[Tensor]) -> None:
        """Step both optimizers unless a gradient is not finite (``"skip"``: that update is left undone, no host
        sync; ``"raise"``: :class:`NonFiniteError` before anything changes, one host sync)."""
        if self.policy == "raise":
            grads = [g for g in (binary_grad(p) for p in model.parameters()) if g is not None]
            if not bool(all_finite(grads)):
                raise NonFiniteError(
                    f"{where}, time step {time_step}: the gradient of "
                    f"{', '.join(nonfinite_gradients(model.named_parameters(prefix='model')))} is not finite "
                    "(nonfinite='raise'; this step's update was not applied)")
            binary_opt.step(time_step=time_step)
            fp_opt.step()
            return
        ok = all_finite([p.grad for p in full_precision if p.grad is not None])
        binary_opt.step(time_step=time_step)  # leaves a tensor with a non-finite update as it is (no sync)
        step_if(fp_opt, ok)
        self.counts[1] += ~ok

    def end_batch(self, epoch: int, last_batch: bool) -> None:
        """Count the batch; after the epoch's last one, summarise (or refuse) the batches it dropped."""
        self._batches += 1
        if last_batch:
            self.end_epoch(epoch)

    def end_epoch(self, epoch: int) -> None:
        skipped, seen = self._skipped, self._batches
        self.start_epoch()
        report_skipped_batches(epoch, skipped, seen, self.max_skipped_fraction)

    def pending(self) -> bool:
        """Whether batches were dropped since the last summary (an epoch cut short by ``max_steps``)."""
        return bool(self._skipped)

    def logged(self, binary_opt: Any) -> dict[str, Tensor]:
        """Cumulative counts to log (no host sync): batches dropped, updates skipped for non-finite gradients."""
        return {"faults/nonfinite_inputs": self.counts[0].float(),
                "faults/nonfinite_grads": (binary_opt.nonfinite_counts().sum() + self.counts[1]).float()}
