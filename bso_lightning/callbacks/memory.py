"""Training memory: what the autograd graph holds, what persists between steps, and the callback that logs both.

Three measurement primitives (also used by ``benchmarks/memory_vs_timesteps.py``):

* :class:`AutogradMemoryMeter` — live and peak bytes of the tensors autograd saves for backward,
  measured with ``torch.autograd.graph.saved_tensors_hooks`` (device independent: works on CPU).
  This is the part of training memory that grows with T under BPTT and stays flat under BSO.
* :func:`persistent_state_bytes` — parameters + gradients + buffers + optimizer state.
* :func:`cuda_peak_bytes` — the CUDA caching allocator's peak (``torch.cuda.max_memory_allocated``).

:class:`MemoryCallback` logs per training epoch (docs/telemetry.md says which figure is which):

* ``memory/peak_autograd_bytes`` — peak bytes held by the autograd graph during a training batch,
* ``memory/state_bytes`` — :func:`persistent_state_bytes` of the model and the optimizers,
* ``memory/peak_train_bytes`` — their sum, a device-independent estimate of the training peak,
* ``memory/peak_rss_bytes`` — the process's peak resident set size (``resource.getrusage``; whole
  process, since it started — not reset per epoch),
* ``memory/cuda_peak_bytes`` — on CUDA only: the allocator's peak during the epoch's training batches,
* ``memory/time_steps`` — T (``pl_module.hparams.time_steps``), so figures can be plotted against T.

Under DDP every figure is the maximum over ranks.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Iterable, Sequence
from typing import Any, Optional, Union

import lightning as L
import torch
from torch import Tensor, nn

from bso_lightning.callbacks._logging import log_to_loggers, logging_step

__all__ = ["AutogradMemoryMeter", "MemoryCallback", "cuda_peak_bytes", "peak_rss_bytes", "persistent_state_bytes"]

_StorageKey = tuple


def _storage_key(t: Tensor) -> tuple[Optional[_StorageKey], int]:
    """(key identifying the memory ``t`` lives in, bytes of that memory); key None for no memory."""
    if t.device.type == "meta":
        return None, 0
    try:
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested, exotic subclasses
        return ("object", id(t)), t.numel() * t.element_size()
    if ptr == 0 or nbytes == 0:
        return None, 0
    return (t.device.type, t.device.index, ptr), nbytes


class _Saved:
    """What the pack hook hands to autograd: holds the saved tensor; its death releases the bytes."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


class AutogradMemoryMeter:
    """Track the live bytes of tensors saved for backward inside a ``with`` block.

    Each storage is counted once, however many saved tensors (views) refer to it, and is released
    when the last of them is freed by autograd (after ``backward()``, or when the graph is dropped).
    Graphs built inside the block keep being tracked after it exits until they are freed.

    Args:
        exclude: a module or tensors whose storages are not counted (typically the model: its
            parameters and buffers are saved by many ops but are persistent state, not graph memory;
            :func:`persistent_state_bytes` counts them). Read again at every ``__enter__``.

    Attributes:
        current_bytes: bytes held by saved tensors right now.
        peak_bytes: the largest ``current_bytes`` since construction or the last :meth:`reset`.

    Example::

        meter = AutogradMemoryMeter(exclude=model)
        with meter:
            loss = model(x).sum()
        print(meter.current_bytes)   # graph of the forward
        loss.backward()
        print(meter.current_bytes, meter.peak_bytes)   # 0, peak of the forward
    """

    def __init__(self, exclude: Union[nn.Module, Iterable[Tensor], None] = None) -> None:
        self._exclude_source = exclude
        self._excluded: set[_StorageKey] = set()
        self._live: dict[_StorageKey, list[int]] = {}  # key -> [references, nbytes]
        self._lock = threading.RLock()  # finalizers may run on autograd threads
        self._hooks: Optional[torch.autograd.graph.saved_tensors_hooks] = None
        self.current_bytes = 0
        self.peak_bytes = 0

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "AutogradMemoryMeter":
        if self._hooks is not None:
            raise RuntimeError("AutogradMemoryMeter is already active; it is not re-entrant")
        self._excluded = self._excluded_keys()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        hooks, self._hooks = self._hooks, None
        if hooks is not None:
            hooks.__exit__(*exc)

    @property
    def active(self) -> bool:
        """Whether the hooks are installed (inside the ``with`` block)."""
        return self._hooks is not None

    def reset(self) -> None:
        """Start a new peak: ``peak_bytes = current_bytes`` (tensors still alive stay counted)."""
        with self._lock:
            self.peak_bytes = self.current_bytes

    # ------------------------------------------------------------------ hooks
    def _excluded_keys(self) -> set[_StorageKey]:
        source = self._exclude_source
        if source is None:
            return set()
        tensors = list(source.parameters()) + list(source.buffers()) if isinstance(source, nn.Module) else source
        return {key for key, _ in map(_storage_key, tensors) if key is not None}

    def _pack(self, tensor: Tensor) -> Any:
        key, nbytes = _storage_key(tensor)
        if key is None or key in self._excluded:
            return tensor
        # Hold a detached alias: holding ``tensor`` itself (an output of the op, with its grad_fn)
        # would form a reference cycle grad_fn -> saved -> tensor -> grad_fn and keep the graph
        # alive until the garbage collector runs. Autograd restores the autograd metadata on unpack.
        saved = _Saved(tensor.detach())
        with self._lock:
            entry = self._live.get(key)
            if entry is None:
                self._live[key] = [1, nbytes]
                self.current_bytes += nbytes
                if self.current_bytes > self.peak_bytes:
                    self.peak_bytes = self.current_bytes
            else:
                entry[0] += 1
        weakref.finalize(saved, self._release, key)
        return saved

    @staticmethod
    def _unpack(packed: Any) -> Tensor:
        return packed.tensor if isinstance(packed, _Saved) else packed

    def _release(self, key: _StorageKey) -> None:
        with self._lock:
            entry = self._live.get(key)
            if entry is None:
                return
            entry[0] -= 1
            if entry[0] == 0:
                del self._live[key]
                self.current_bytes -= entry[1]


def _unwrap(optimizer: Any) -> Any:
    return getattr(optimizer, "optimizer", optimizer) if not isinstance(optimizer, torch.optim.Optimizer) else optimizer


def persistent_state_bytes(module: nn.Module, optimizers: Sequence[torch.optim.Optimizer]) -> int:
    """Bytes of the state that lives across training steps: parameters + gradients + buffers + optimizer state.

    Each storage is counted once. A trainable parameter whose ``.grad`` is currently ``None`` (the
    optimizers' ``zero_grad(set_to_none=True)``) is counted with a gradient of its own size and dtype,
    since it holds one during every step; an existing ``.grad`` is counted as it is. Optimizer state
    counts every tensor in ``optimizer.state`` (BSO/T-BSO momentum and ``v``, SGD momentum buffers, ...).
    """
    seen: set[_StorageKey] = set()
    total = 0

    def add(t: Tensor) -> None:
        nonlocal total
        key, nbytes = _storage_key(t)
        if key is not None and key not in seen:
            seen.add(key)
            total += nbytes

    for p in module.parameters():
        add(p)
        if p.grad is not None:
            add(p.grad)
        elif p.requires_grad:
            total += p.numel() * p.element_size()
    for b in module.buffers():
        add(b)
    for optimizer in optimizers:
        for state in _unwrap(optimizer).state.values():
            for value in state.values():
                if isinstance(value, Tensor):
                    add(value)
    return total


def cuda_peak_bytes(device: Union[torch.device, str, int, None]) -> int:
    """Peak bytes allocated by tensors on a CUDA device since the last ``torch.cuda.reset_peak_memory_stats``."""
    device = torch.device(device) if device is not None else torch.device("cuda")
    if device.type != "cuda":
        raise ValueError(f"device must be a CUDA device, got {device!r}")
    return int(torch.cuda.max_memory_allocated(device))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since it started (``resource.getrusage``); 0 where unavailable."""
    try:
        import resource
    except ImportError:  # Windows
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


class MemoryCallback(L.Callback):
    """Log peak training memory per epoch together with T (metric names in the module docstring).

    The autograd meter is active from ``on_train_batch_start`` to ``on_train_batch_end``, so it sees
    every graph of the training step (forward and backward of each time step) and nothing of
    validation or BatchNorm recalibration; the model's parameters and buffers are excluded from it
    (they are in ``memory/state_bytes``). On CUDA the allocator peak is reset at the start of each
    training epoch and around validation, so ``memory/cuda_peak_bytes`` covers training batches only.

    Args:
        track_autograd: install the saved-tensor hooks (a small Python cost per saved tensor);
            without them ``memory/peak_autograd_bytes`` and ``memory/peak_train_bytes`` are not logged.

    ``last_metrics`` holds the figures of the last training epoch (after the reduction over ranks).
    """

    def __init__(self, track_autograd: bool = True) -> None:
        self.track_autograd = bool(track_autograd)
        self._meter: Optional[AutogradMemoryMeter] = None
        self._cuda_peak = 0
        self.last_metrics: dict[str, float] = {}  # the figures of the last epoch, as logged

    # ------------------------------------------------------------------ epoch
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._meter = AutogradMemoryMeter(exclude=pl_module) if self.track_autograd else None
        self._cuda_peak = 0
        if pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._meter is not None and not self._meter.active:
            self._meter.__enter__()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._exit_meter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._read_cuda(pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and pl_module.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(pl_module.device)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._exit_meter()
        self._read_cuda(pl_module)
        names: list[str] = []
        values: list[int] = []
        state = persistent_state_bytes(pl_module, trainer.optimizers)
        if self._meter is not None:
            names += ["memory/peak_autograd_bytes", "memory/state_bytes", "memory/peak_train_bytes"]
            values += [self._meter.peak_bytes, state, self._meter.peak_bytes + state]
        else:
            names.append("memory/state_bytes")
            values.append(state)
        names.append("memory/peak_rss_bytes")
        values.append(peak_rss_bytes())
        if pl_module.device.type == "cuda":
            names.append("memory/cuda_peak_bytes")
            values.append(self._cuda_peak)
        hparams = getattr(pl_module, "hparams", None)
        time_steps = hparams.get("time_steps") if hparams is not None else None
        if isinstance(time_steps, int):
            names.append("memory/time_steps")
            values.append(time_steps)
        reduced = trainer.strategy.reduce(torch.tensor(values, dtype=torch.int64, device=pl_module.device),
                                          reduce_op="max")
        metrics: dict[str, float] = {name: float(v) for name, v in zip(names, reduced.tolist())}
        metrics["epoch"] = float(trainer.current_epoch)
        self.last_metrics = metrics
        log_to_loggers(trainer, metrics, step=max(logging_step(trainer) - 1, 0))

    # ------------------------------------------------------------------ cleanup
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._exit_meter()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._exit_meter()

    def _exit_meter(self) -> None:
        if self._meter is not None and self._meter.active:
            self._meter.__exit__(None, None, None)

    def _read_cuda(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            self._cuda_peak = max(self._cuda_peak, cuda_peak_bytes(pl_module.device))
