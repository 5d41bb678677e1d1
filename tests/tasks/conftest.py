"""The task tests' tiny classifier: the shared one (``tests.conftest``) with a 2-epoch cosine schedule."""

from functools import partial
from typing import Any

from bso_lightning.optim import CosineAnnealingToZero
from bso_lightning.tasks import OnlineClassifier
from tests import conftest
from tests.conftest import make_trainer

__all__ = ["make_task", "make_trainer"]


def make_task(**kwargs: Any) -> OnlineClassifier:
    """The tiny OnlineClassifier; ``lr_scheduler=partial(CosineAnnealingToZero, epochs=2)`` unless given (so a
    trainer without max_epochs works)."""
    return conftest.make_task(**{"lr_scheduler": partial(CosineAnnealingToZero, epochs=2), **kwargs})
