"""A quiet ``lightning.Trainer`` for scripts, benchmarks and tests (the CLI has its own defaults in ``cli.py``)."""

from __future__ import annotations

from typing import Any

import lightning as L

#: CPU, one device, nothing written or printed but the results: no logger, checkpoints, progress bar,
#: model summary or sanity validation.
QUIET_TRAINER: dict[str, Any] = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def quiet_trainer(**overrides: Any) -> L.Trainer:
    """``L.Trainer(**QUIET_TRAINER)`` with ``overrides`` applied (any ``Trainer`` argument)."""
    return L.Trainer(**{**QUIET_TRAINER, **overrides})


__all__ = ["QUIET_TRAINER", "quiet_trainer"]
