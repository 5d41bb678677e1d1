"""Faults during training: non-finite inputs and gradients, unreadable or mismatched checkpoints.

Non-finite values (``OnlineClassifier(nonfinite=...)``):

* ``"skip"`` (default): a batch whose input holds NaN/Inf is dropped before the forward pass (a
  :class:`NonFiniteWarning` names it; one host sync per batch for that decision). A non-finite gradient
  changes nothing: BSO/T-BSO leave such a tensor as it is (no flip, momentum unchanged, counted in
  ``nonfinite_counts()``) and the SGD step of the full-precision parameters is undone on the device
  (:func:`step_if`), without a host sync.
* ``"raise"``: stop with :class:`NonFiniteError`, naming the batch, the time step and what was not
  finite, before anything is updated (one host sync per batch and per time step).

Checkpoints: :func:`check_checkpoint` reads a checkpoint's metadata without loading its tensors and
raises :class:`CheckpointError` naming the file for a missing, truncated or unreadable file and for one
written by a different architecture (:func:`check_compatible`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Optional

import torch
from torch import Tensor

#: Hyper-parameters that fix the shapes of the weights and the layout of the optimizer state:
#: a checkpoint can only be resumed by a model that agrees on all of them.
ARCHITECTURE_KEYS = ("arch", "arch_kwargs", "num_classes", "in_channels", "optimizer")

#: ``ckpt_path`` values that Lightning resolves itself (not file names).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc")


class NonFiniteError(FloatingPointError):
    """An input or gradient held NaN/Inf and ``nonfinite="raise"``."""


class NonFiniteWarning(RuntimeWarning):
    """A batch was skipped because its input held NaN/Inf (``nonfinite="skip"``)."""


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable (e.g. truncated) or from a different architecture."""

    def __init__(self, path: Any, message: str) -> None:
        self.path = path
        super().__init__(f"checkpoint {os.fspath(path)!s}: {message}")


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
    """Names (with a count) of the parameters whose gradient holds NaN/Inf (host syncs: error path only)."""
    return [
        f"{name} ({describe_nonfinite(p.grad)})"
        for name, p in named_params
        if p.grad is not None and not bool(torch.isfinite(p.grad).all())
    ]


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


# --------------------------------------------------------------------------- checkpoints


def _normalise(key: str, value: Any) -> Any:
    if key == "arch_kwargs":
        return dict(value or {})
    return value


def check_compatible(saved: Mapping[str, Any], current: Mapping[str, Any], path: Any = "<checkpoint>") -> None:
    """Raise :class:`CheckpointError` if ``saved`` and ``current`` hyper-parameters disagree on an
    :data:`ARCHITECTURE_KEYS` entry (only keys present in both are compared)."""
    mismatches = [
        f"{key}: checkpoint {_normalise(key, saved[key])!r}, model {_normalise(key, current[key])!r}"
        for key in ARCHITECTURE_KEYS
        if key in saved and key in current and _normalise(key, saved[key]) != _normalise(key, current[key])
    ]
    if mismatches:
        raise CheckpointError(
            path,
            "was written by a different architecture (" + "; ".join(mismatches) + "). Build the model with the "
            "checkpoint's settings, or start a new run instead of resuming.",
        )


def check_checkpoint(path: Any, hparams: Optional[Mapping[str, Any]] = None) -> None:
    """Check that ``path`` is a readable Lightning checkpoint (and, given ``hparams``, of the same architecture).

    Reads only the pickled metadata: tensors are memory-mapped, not loaded. Raises
    :class:`CheckpointError` naming the file for a missing, empty, truncated or unreadable file.
    """
    if not os.path.isfile(path):
        raise CheckpointError(path, "no such file" if not os.path.exists(path) else "is not a file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(path, "is empty (0 bytes): the job was probably killed while saving it")
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as mmap_error:  # noqa: BLE001 - legacy (non-zip) files cannot be memory-mapped
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - reported with the file's path
            raise CheckpointError(
                path,
                f"cannot be read ({type(error).__name__}: {error}); it is truncated or corrupt (e.g. the job was "
                "killed while saving it). Resume from an earlier checkpoint.",
            ) from mmap_error
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(path, "is not a Lightning checkpoint (no 'state_dict' entry)")
    saved = checkpoint.get("hyper_parameters")
    if hparams is not None and isinstance(saved, Mapping):
        check_compatible(saved, hparams, path)


def check_ckpt_path(path: Any) -> None:
    """:func:`check_checkpoint` for a ``ckpt_path`` argument, unless Lightning resolves it itself
    (``"last"``, ``"best"``, ``"hpc"``, ``"registry..."``) or it is a URL."""
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if text in SPECIAL_CKPT_PATHS or text.startswith("registry") or "://" in text:
        return
    check_checkpoint(path)
