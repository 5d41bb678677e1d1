"""The model a user keeps against the accuracy training reports: warn once when they diverge.

With real-time updates BSO/T-BSO change the weights between the time steps of a batch, so the running
training accuracy (``train/acc``, averaged over the epoch so far) describes a moving sequence of weights,
not the current ones. A high late flip rate (T-BSO with a constant γ and β1) makes the current weights a
noisy sample that scores far below it (DESIGN.md §3, docs/hyperparameters.md). The classifiers therefore log,
after every validation, the running training accuracy next to ``val/acc`` (current weights, eval mode,
BatchNorm re-estimated) and their difference, and :class:`AccuracyGapMonitor` warns once per run when the
held-out accuracy falls more than ``margin`` below the running training accuracy.
"""

from __future__ import annotations

import math
import warnings

#: Default margin: 5 accuracy points (0.05). Healthy runs measured here stay inside it (MNIST, 1 epoch, width 16,
#: every method: held-out accuracy above the running training accuracy, benchmarks/results/real_data.md); T-BSO
#: with constant γ and β1 on MNIST at width 8 opened a 23.5-point gap
#: (benchmarks/results/real_data_tune_w8_28px_constant.md), issue 10 reports 34.8 points at the default width.
DEFAULT_GAP_MARGIN = 0.05


#: The warnings about the kept model (this one and ``LateFlipWarning``) stay quiet on runs shorter than this many
#: training batches and under ``fast_dev_run``: a handful of batches is a smoke test, not a model to keep.
MIN_BATCHES_FOR_WARNINGS = 50


def run_long_enough_to_warn(trainer) -> bool:
    """False under ``fast_dev_run`` or before :data:`MIN_BATCHES_FOR_WARNINGS` training batches have run."""
    if trainer is None or getattr(trainer, "fast_dev_run", False):
        return False
    done = trainer.fit_loop.epoch_loop.batch_progress.total.completed
    return done >= MIN_BATCHES_FOR_WARNINGS


class AccuracyGapWarning(UserWarning):
    """The current weights score far below the running training accuracy on held-out data."""


class AccuracyGapMonitor:
    """Warn (once) when ``running_train − held_out > margin`` (accuracies as fractions in [0, 1])."""

    def __init__(self, margin: float = DEFAULT_GAP_MARGIN) -> None:
        if not (isinstance(margin, (int, float)) and 0.0 <= margin <= 1.0):
            raise ValueError(f"margin must lie in [0, 1] (accuracy as a fraction), got {margin!r}")
        self.margin = float(margin)
        self.warned = False

    def check(self, running_train: float, held_out: float, where: str, warn: bool = True) -> float:
        """Return the gap ``running_train − held_out``; warn the first time it exceeds the margin (if ``warn``)."""
        gap = float(running_train) - float(held_out)
        if warn and not self.warned and math.isfinite(gap) and gap > self.margin:
            self.warned = True
            warnings.warn(
                f"{where}: the current weights reach {100 * held_out:.1f}% on the held-out split (eval mode) "
                f"but the running training accuracy is {100 * running_train:.1f}% — a gap of {100 * gap:.1f} "
                f"points (> {100 * self.margin:.0f}). The model you keep is worse than training reports; with "
                "BSO/T-BSO this usually means weights still flip at a high rate: decay γ and 1 − β to near zero "
                "over the run (schedule='run_exp', the default; docs/hyperparameters.md). Warned once per run.",
                AccuracyGapWarning, stacklevel=2)
        return gap
