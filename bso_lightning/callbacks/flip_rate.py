"""Flip rates of the binary weights, per layer and per time step, and T-BSO's per-t thresholds.

The callback only observes: an optimizer *step post-hook* on the BSO/T-BSO optimizer adds the
optimizer's ``flip_counts()`` (entries flipped per tensor at that step) into an on-device int64 table
indexed by (time step t, tensor). Nothing leaves the device until a logging interval ends; then one
host transfer reads the table, the optimizer's ``nonfinite_counts()`` and (T-BSO) ``flip_thresholds(t)``,
and the figures go to every logger.

Metrics (each a value over the optimizer steps of the last interval of ``log_every_n_steps`` batches):

* ``flips/overall`` — fraction of all binary weights flipped per optimizer step (mean over steps),
* ``flips/<layer>`` — the same for one binary tensor; ``<layer>`` is its module name in the
  LightningModule (``model.3`` for ``model.3.weight``),
* ``flips/t<t>`` — fraction of all binary weights flipped per step at time step ``t``,
* ``flips/t<t>/<layer>`` — per layer and time step (only with ``per_layer_time_step=True``),
* ``flips/nonfinite_skipped`` — tensor updates skipped so far because their gradient was not finite
  (cumulative since the optimizer was created: the sum of ``nonfinite_counts()``),
* ``tbso/threshold_t<t>/<layer>`` — T-BSO only: the current flip threshold γ·sqrt(v[t] + ε) of each
  tensor at each time step seen so far.

End-of-training summary (``on_train_end``): the steps not yet logged are flushed, and the flip rate of the
last ``summary_batches`` training batches goes to the loggers and ``trainer.callback_metrics`` as
``flips/final`` (fraction per optimizer step), to :attr:`FlipRateCallback.summary`, and into one log line.
If it is above ``warn_above`` (default 1e-2 = 1% of the weights per step) a warning says so: weights that
still flip at that rate at the end are a noisy sample that scores below the running training accuracy
(docs/hyperparameters.md; measured on MNIST: 3.2% per step with constant γ and β1, 0.18% with the default
``run_exp`` schedule).
"""

from __future__ import annotations

from collections.abc import Sequence
import warnings
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from bso_lightning.nn.packed import binary_numel
from bso_lightning.callbacks._logging import log_to_loggers, logging_step
from bso_lightning.tasks.gap import run_long_enough_to_warn

__all__ = ["FlipRateCallback", "LateFlipWarning", "find_binary_optimizer", "binary_layer_names"]

class LateFlipWarning(UserWarning):
    """Binary weights still flip at a high rate at the end of training."""


def find_binary_optimizer(optimizers: Sequence[Any]) -> Any:
    """The first optimizer with ``flip_counts()`` (BSO/T-BSO); ValueError if there is none."""
    for optimizer in optimizers:
        if callable(getattr(optimizer, "flip_counts", None)):
            return optimizer
    names = [type(o).__name__ for o in optimizers]
    raise ValueError(f"no optimizer with flip_counts() (BSO/TBSO) among the trainer's optimizers {names}")


def binary_layer_names(module: torch.nn.Module, params: Sequence[Tensor]) -> list[str]:
    """Name each binary tensor by its module in ``module`` (``model.3`` for ``model.3.weight``).

    A tensor that is not a parameter of ``module`` is named ``param<i>``; a name that would not be
    unique keeps its full parameter name.
    """
    by_id = {id(p): name for name, p in module.named_parameters()}
    full = [by_id.get(id(p), f"param{i}") for i, p in enumerate(params)]
    short = [name.removesuffix(".weight_bits").removesuffix(".weight") for name in full]
    return [s if short.count(s) == 1 else f for s, f in zip(short, full)]


class FlipRateCallback(L.Callback):
    """Log flip rates of the BSO/T-BSO optimizer (metric names in the module docstring).

    Args:
        log_every_n_steps: logging interval in training batches (default: the trainer's
            ``log_every_n_steps``, so the rows line up with ``train/loss``); 0 disables logging.
        per_layer: log ``flips/<layer>``.
        per_time_step: log ``flips/t<t>``.
        per_layer_time_step: also log ``flips/t<t>/<layer>`` (T × layers metrics).
        log_thresholds: log T-BSO's ``tbso/threshold_t<t>/<layer>``.
        summary_batches: the end-of-training flip rate ``flips/final`` covers this many last batches.
        warn_above: warn at the end of training if ``flips/final`` exceeds this fraction per step (None: never).
        require_binary_optimizer: raise if the trainer has no BSO/T-BSO optimizer; ``False`` makes the callback
            do nothing then (the CLI's default callbacks, which also serve the baselines).

    The time step of each ``optimizer.step`` is read from its ``time_step`` argument; a step called
    without one counts as the k-th call of the current batch (k = 0, 1, ...).

    After fitting, ``history`` holds every logged row (``dict`` with ``step`` and the metrics).
    """

    def __init__(self, log_every_n_steps: Optional[int] = None, per_layer: bool = True,
                 per_time_step: bool = True, per_layer_time_step: bool = False, log_thresholds: bool = True,
                 summary_batches: int = 10, warn_above: Optional[float] = 1e-2,
                 require_binary_optimizer: bool = True) -> None:
        if log_every_n_steps is not None and (not isinstance(log_every_n_steps, int) or log_every_n_steps < 0):
            raise ValueError(f"log_every_n_steps must be an int >= 0 or None, got {log_every_n_steps!r}")
        if not isinstance(summary_batches, int) or isinstance(summary_batches, bool) or summary_batches < 1:
            raise ValueError(f"summary_batches must be an int >= 1, got {summary_batches!r}")
        if warn_above is not None and not 0.0 <= warn_above <= 1.0:
            raise ValueError(f"warn_above must lie in [0, 1] or be None, got {warn_above!r}")
        self.summary_batches = summary_batches
        self.warn_above = warn_above
        self.require_binary_optimizer = require_binary_optimizer
        #: After training: {"flips/final": fraction per step over the last ``summary_batches`` batches, "batches": n}.
        self.summary: dict[str, float] = {}
        self.log_every_n_steps = log_every_n_steps
        self.per_layer = per_layer
        self.per_time_step = per_time_step
        self.per_layer_time_step = per_layer_time_step
        self.log_thresholds = log_thresholds
        self.history: list[dict[str, float]] = []
        self._optimizer: Any = None
        self._handle: Any = None
        self._names: list[str] = []
        self._numel: list[int] = []
        self._counts: Optional[Tensor] = None  # int64 [time steps, tensors], on the parameters' device
        self._steps: list[int] = []  # optimizer steps per time step in the current interval
        self._time_steps_seen = 0
        self._calls_this_batch = 0
        self._recent: list[Tensor] = []  # per batch: [flips, steps] (int64, on device), the last summary_batches

    # ------------------------------------------------------------------ setup / teardown
    def attach(self, optimizer: Any, module: Optional[torch.nn.Module] = None) -> None:
        """Start counting the flips of ``optimizer`` (BSO/T-BSO); layer names come from ``module``.

        Called by ``on_fit_start``; call it yourself to use the callback outside a Trainer, then read
        the figures with :meth:`compute`. Re-attaching detaches from the previous optimizer.
        """
        self.detach()
        params = optimizer.binary_parameters()
        self._optimizer = optimizer
        self._names = binary_layer_names(module, params) if module is not None else [f"param{i}" for i in range(len(params))]
        self._numel = [binary_numel(p) for p in params]
        self._counts = torch.zeros((0, len(params)), dtype=torch.int64, device=params[0].device)
        self._steps = []
        self._time_steps_seen = 0
        self._handle = optimizer.register_step_post_hook(self._after_step)

    def detach(self) -> None:
        """Remove the step hook (the accumulated figures stay readable with :meth:`compute`)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        try:
            optimizer = find_binary_optimizer(trainer.optimizers)
        except ValueError:
            if self.require_binary_optimizer:
                raise
            return
        self.attach(optimizer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.detach()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.detach()

    # ------------------------------------------------------------------ accumulation (no host sync)
    def _after_step(self, optimizer: Any, args: tuple, kwargs: dict) -> None:
        t = kwargs.get("time_step")
        if t is None and len(args) >= 3:  # step(self, closure, time_step)
            t = args[2]
        if t is None:
            t = self._calls_this_batch
        self._calls_this_batch += 1
        t = int(t)
        counts = self._counts
        assert counts is not None
        if t >= counts.shape[0]:
            grown = counts.new_zeros((t + 1, counts.shape[1]))
            grown[: counts.shape[0]] = counts
            self._counts = counts = grown
            self._steps += [0] * (t + 1 - len(self._steps))
        counts[t].add_(optimizer.flip_counts())
        self._steps[t] += 1
        self._time_steps_seen = max(self._time_steps_seen, t + 1)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._calls_this_batch = 0
        if self._counts is not None:
            self._batch_start = (self._counts.sum(), sum(self._steps))

    def _remember_batch(self) -> None:
        """Keep this batch's flips and steps for the end-of-training rate (device tensors: no sync)."""
        start = getattr(self, "_batch_start", None)
        if self._counts is None or start is None:
            return
        flips = self._counts.sum() - start[0]
        steps = sum(self._steps) - start[1]
        self._recent.append(torch.stack([flips, flips.new_tensor(steps)]))
        del self._recent[:-self.summary_batches]
        self._batch_start = None

    def state_dict(self) -> dict[str, Any]:
        """The last batches' flip counts, so a resumed run reports the same ``flips/final`` (saved in checkpoints)."""
        return {"recent": [r.detach().cpu().clone() for r in self._recent]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._recent = [torch.as_tensor(r) for r in state_dict.get("recent", [])]

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Flush the steps not yet logged and report the flip rate of the last ``summary_batches`` batches."""
        if self._optimizer is None:
            return
        if sum(self._steps) > 0 and self._interval(trainer) > 0:
            self._flush(trainer, logging_step(trainer))
        if not self._recent:
            return
        flips, steps = torch.stack([r.to(self._recent[-1].device) for r in self._recent]).sum(0).tolist()
        if steps == 0:
            return
        rate = flips / (steps * sum(self._numel))
        self.summary = {"flips/final": rate, "batches": float(len(self._recent))}
        trainer.callback_metrics["flips/final"] = torch.tensor(rate)
        log_to_loggers(trainer, {"flips/final": rate}, step=logging_step(trainer))
        rank_zero_info(f"FlipRateCallback: in the last {len(self._recent)} training batches "
                       f"{100 * rate:.4f}% of the binary weights flipped per optimizer step (flips/final)")
        if self.warn_above is not None and rate > self.warn_above and trainer.is_global_zero \
                and run_long_enough_to_warn(trainer):  # (quiet under fast_dev_run and on a handful of batches)
            warnings.warn(
                f"{100 * rate:.3f}% of the binary weights still flip per step at the end of training "
                f"(> {100 * self.warn_above:.2f}%): the final weights are a noisy sample and will likely score "
                "below the running training accuracy; decay γ and 1 − β to near zero over the run "
                "(docs/hyperparameters.md)", LateFlipWarning, stacklevel=2)

    # ------------------------------------------------------------------ logging (one sync per interval)
    def _interval(self, trainer: L.Trainer) -> int:
        return trainer.log_every_n_steps if self.log_every_n_steps is None else self.log_every_n_steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._remember_batch()
        interval = self._interval(trainer)
        step = logging_step(trainer)
        if interval > 0 and ((step + 1) % interval == 0 or trainer.should_stop):
            self._flush(trainer, step)

    def compute(self) -> dict[str, float]:
        """The metrics of the steps accumulated since the last call, which resets the accumulators.

        Performs the one host-device synchronisation of an interval. Empty if no step was taken.
        """
        optimizer, counts = self._optimizer, self._counts
        if optimizer is None or counts is None or sum(self._steps) == 0:
            return {}
        n_t, n_p = counts.shape
        parts = [counts.flatten().double(), optimizer.nonfinite_counts().to(counts.device).double()]
        thresholds_t = self._time_steps_seen if self.log_thresholds and hasattr(optimizer, "flip_thresholds") else 0
        for t in range(thresholds_t):
            parts.append(optimizer.flip_thresholds(t).to(counts.device).double())
        host = torch.cat(parts).tolist()  # the one sync
        table = [host[t * n_p:(t + 1) * n_p] for t in range(n_t)]
        nonfinite = host[n_t * n_p:n_t * n_p + n_p]
        threshold_values = host[n_t * n_p + n_p:]
        steps = list(self._steps)
        counts.zero_()
        self._steps = [0] * n_t

        total_steps = sum(steps)
        total_weights = sum(self._numel)
        metrics: dict[str, float] = {
            "flips/overall": sum(map(sum, table)) / (total_weights * total_steps),
        }
        if self.per_layer:
            for i, name in enumerate(self._names):
                metrics[f"flips/{name}"] = sum(row[i] for row in table) / (self._numel[i] * total_steps)
        for t, row in enumerate(table):
            if steps[t] == 0:
                continue
            if self.per_time_step:
                metrics[f"flips/t{t}"] = sum(row) / (total_weights * steps[t])
            if self.per_layer_time_step:
                for i, name in enumerate(self._names):
                    metrics[f"flips/t{t}/{name}"] = row[i] / (self._numel[i] * steps[t])
        metrics["flips/nonfinite_skipped"] = float(sum(nonfinite))
        for t in range(thresholds_t):
            for i, name in enumerate(self._names):
                metrics[f"tbso/threshold_t{t}/{name}"] = threshold_values[t * n_p + i]
        return metrics

    def _flush(self, trainer: L.Trainer, step: int) -> None:
        metrics = self.compute()
        if metrics:
            self.history.append({"step": float(step), **metrics})
            log_to_loggers(trainer, metrics, step=step)
