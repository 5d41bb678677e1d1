"""Writing metrics straight to the trainer's loggers, on the same step axis as ``self.log``.

The callbacks log through ``trainer.loggers`` (as Lightning's ``LearningRateMonitor`` does) rather than
``pl_module.log``: their intervals are their own, and byte counts must not be squeezed through the
float32 that ``self.log`` stores values in.
"""

from __future__ import annotations

from collections.abc import Mapping

import lightning as L


def logging_step(trainer: L.Trainer) -> int:
    """The step ``self.log`` uses: training batches that have stepped (not ``global_step``, which counts
    every ``optimizer.step()`` — 2·T per batch for the online classifier)."""
    loop = getattr(trainer, "fit_loop", None)
    epoch_loop = getattr(loop, "epoch_loop", None)
    step = getattr(epoch_loop, "_batches_that_stepped", None)
    return int(step) if step is not None else int(trainer.global_step)


def log_to_loggers(trainer: L.Trainer, metrics: Mapping[str, float], step: int) -> None:
    """``log_metrics`` on every logger of ``trainer`` (loggers only write on global rank 0)."""
    if not metrics:
        return
    for logger in trainer.loggers:
        logger.log_metrics(dict(metrics), step=step)
