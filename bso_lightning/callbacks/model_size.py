"""Model size by the paper's rule (DESIGN.md §1), logged once per fit/validate/test run.

Metrics (step 0 of the run's logger):

* ``model/size_bytes`` — ``bso_lightning.models.model_size_bytes``: 1 bit per binary weight +
  4 bytes per full-precision parameter (BatchNorm running statistics not counted),
* ``model/binary_params`` — number of binary weights (claimed by ``binary_parameters()``),
* ``model/full_precision_params`` — number of other trainable parameters.
"""

from __future__ import annotations

import lightning as L
from torch import nn

from bso_lightning.callbacks._logging import log_to_loggers, logging_step
from bso_lightning.models import model_size_bytes
from bso_lightning.nn.packed import binary_numel
from bso_lightning.nn.routing import split_parameters

__all__ = ["ModelSizeCallback", "model_size_metrics"]


def model_size_metrics(model: nn.Module) -> dict[str, float]:
    """``model/size_bytes``, ``model/binary_params`` and ``model/full_precision_params`` of ``model``."""
    split = split_parameters(model)
    return {
        "model/size_bytes": float(model_size_bytes(model)),
        "model/binary_params": float(sum(binary_numel(p) for p in split.binary)),
        "model/full_precision_params": float(sum(p.numel() for p in split.full_precision)),
    }


class ModelSizeCallback(L.Callback):
    """Log the model size once, at the start of ``fit`` (or of ``validate``/``test`` when run alone).

    The model is ``pl_module.model`` when the LightningModule has one (as ``OnlineClassifier``), else
    the LightningModule itself. ``metrics`` holds the logged values afterwards.
    """

    def __init__(self) -> None:
        self.metrics: dict[str, float] = {}

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        self.metrics = model_size_metrics(model if isinstance(model, nn.Module) else pl_module)
        log_to_loggers(trainer, self.metrics, step=logging_step(trainer))

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._log(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "test":
            self._log(trainer, pl_module)
