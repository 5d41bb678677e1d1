"""The full-precision side (first conv, BatchNorm, classifier): SGD and its cosine learning rate (DESIGN.md §1).

Both are ordinary torch classes with this library's defaults, given to a classifier like any other
(``fp_optimizer=...``, ``lr_scheduler=...``; ``class_path``/``init_args`` in YAML, LightningCLI's
``OptimizerCallable``/``LRSchedulerCallable``): any ``torch.optim`` optimizer or learning-rate scheduler works there.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional

import torch

from bso_lightning.optim.checks import check_threshold


class FullPrecisionSGD(torch.optim.SGD):
    """``torch.optim.SGD`` with the paper's settings as defaults: lr 0.1, momentum 0.9 (Sec. 5).

    Each hyper-parameter must be a finite number >= 0 (NaN is refused here, not after a step)."""

    def __init__(self, params: Iterable[Any], lr: float = 0.1, momentum: float = 0.9, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=check_threshold(lr, "lr"), momentum=check_threshold(momentum, "momentum"),
                         weight_decay=check_threshold(weight_decay, "weight_decay"))


class CosineAnnealingToZero(torch.optim.lr_scheduler.CosineAnnealingLR):
    """``CosineAnnealingLR`` to 0 over ``epochs`` epochs; ``None`` (default): over the run's ``trainer.max_epochs``,
    which the classifier gives it (:meth:`set_max_epochs`) before the first step.

    (The authors' scripts name ``T_max=300`` for 400 epochs: ``epochs: 300``.)"""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: Optional[int] = None) -> None:
        if epochs is not None and (not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1):
            raise ValueError(f"epochs must be an integer >= 1 (or None: trainer.max_epochs), got {epochs!r}")
        self.epochs = epochs
        super().__init__(optimizer, T_max=epochs or 1, eta_min=0.0)  # (step 0 does not read T_max)

    def set_max_epochs(self, max_epochs: Optional[int]) -> None:
        """With ``epochs=None``, anneal over ``max_epochs`` (the trainer's); a run without it needs ``epochs``."""
        if self.epochs is not None:
            return
        if not max_epochs or max_epochs < 1:
            raise ValueError("lr_scheduler: CosineAnnealingToZero needs epochs when the trainer has no max_epochs "
                             "(the cosine learning rate runs over epochs)")
        self.T_max = max_epochs

    def state_dict(self) -> dict[str, Any]:
        """``CosineAnnealingLR``'s state (``T_max`` included), as checkpoints held it before; ``epochs`` is a setting
        of the constructor, not state."""
        return {k: v for k, v in super().state_dict().items() if k != "epochs"}


__all__ = ["CosineAnnealingToZero", "FullPrecisionSGD"]
