"""Two readings of one evaluation: BatchNorm re-estimated (``acc``) and BatchNorm running statistics (``acc_running_bn``).

The library re-estimates BatchNorm statistics before every evaluation (DESIGN.md §3); the authors' code
evaluates with the running statistics training left behind. Both are reported, so the effect of the
re-estimation is visible in every run: the running statistics are copied before the re-estimation, and each
evaluation batch runs once with the re-estimated statistics and once with the copied ones (the BatchNorm
buffers are swapped in place: a few KB per layer, no extra model copy). Cost: one more forward pass per
evaluation batch while re-estimation is on; none when it is off (``bn_recalibration_batches=0``: both
readings are the same forward).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

BatchNormState = list[dict[str, Tensor]]


def _norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def batchnorm_state(model: nn.Module) -> BatchNormState:
    """A copy of every BatchNorm's running statistics and batch counts (in ``model.modules()`` order)."""
    return [{name: value.detach().clone() for name, value in m.named_buffers(recurse=False)}
            for m in _norms(model)]  # (per-time-step statistics too: nn/time_step_batchnorm.py)


def load_batchnorm_state(model: nn.Module, state: BatchNormState) -> None:
    """Copy ``state`` (from :func:`batchnorm_state` of the same model) back into the BatchNorm buffers."""
    norms = _norms(model)
    if len(norms) != len(state):
        raise ValueError(f"state holds {len(state)} BatchNorm layers, the model has {len(norms)}")
    for m, saved in zip(norms, state):
        for name, value in saved.items():
            getattr(m, name).copy_(value)


class RunningBatchNormReading:
    """Holds the running statistics (copied before re-estimation) and the re-estimated ones of one evaluation."""

    def __init__(self, running: BatchNormState, recalibrated: Optional[BatchNormState]) -> None:
        self.running = running
        self.recalibrated = recalibrated  # None: no re-estimation, the running statistics are in use

    def output(self, model: nn.Module, forward, x: Tensor, output: Tensor) -> Tensor:
        """The output with running statistics: ``output`` itself if nothing was re-estimated, else one more
        ``forward(x)`` with the running statistics swapped in (and the re-estimated ones swapped back)."""
        if self.recalibrated is None:
            return output
        load_batchnorm_state(model, self.running)
        try:
            return forward(x)
        finally:
            load_batchnorm_state(model, self.recalibrated)
