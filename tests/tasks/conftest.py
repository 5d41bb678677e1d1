"""The task tests' tiny classifier: the shared factory (``tests.conftest.make_task``) with the ``TASK_TESTS`` preset."""

from functools import partial

from tests import conftest
from tests.conftest import make_trainer

__all__ = ["make_task", "make_trainer"]

#: ``tests.conftest.make_task`` with a 2-epoch cosine schedule (so a trainer without max_epochs works).
make_task = partial(conftest.make_task, preset=conftest.TASK_TESTS)
