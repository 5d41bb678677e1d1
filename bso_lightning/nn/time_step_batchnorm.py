"""BatchNorm that evaluates as it trains: running statistics kept per time step.

In training a BatchNorm normalises each time step with that step's batch statistics; a plain BatchNorm then
evaluates every step with one set of running statistics pooled over all steps. In a spiking network fed the
same image at every step the statistics differ from step to step (neurons start at rest: spike rates, and with
binary weights, whose fan-in sums are far from zero, the pre-activation means follow them), so the pooled
statistics mis-normalise the early steps. Measured on MNIST at 28×28 (T-BSO, small_cnn width 16, 1 epoch):
the kept weights score 37% with pooled statistics and 88% with per-step statistics (docs/hyperparameters.md).

:class:`TimeStepBatchNorm2d` trains exactly like ``nn.BatchNorm2d`` (same output, same pooled running statistics,
kept for export and older checkpoints) and also keeps running statistics for each time step t < ``time_steps``;
in eval mode step t is normalised with its own. Steps past the last slot use the last slot. The step counter is
a spikingjelly memory, reset with the neurons by ``functional.reset_net``. One affine (weight, bias) per layer,
as the paper's models have.

(spikingjelly's ``BatchNormThroughTime2d`` keeps a separate scale per step and no bias: another model, with other
parameters than the paper's; its ``TemporalEffectiveBatchNorm2d`` needs the whole [T, N, ...] sequence at once,
which online training never has.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from spikingjelly.activation_based.base import MemoryModule
from torch import Tensor, nn

__all__ = ["TimeStepBatchNorm2d", "use_time_step_batchnorm_"]


class TimeStepBatchNorm2d(nn.BatchNorm2d, MemoryModule):
    """``nn.BatchNorm2d`` with running statistics per time step for evaluation (module docstring).

    Extra buffers: ``running_mean_t`` and ``running_var_t`` [time_steps, C], ``num_batches_tracked_t``
    [time_steps]. With ``momentum=None`` (``torch.optim.swa_utils.update_bn``) each slot is a cumulative average.
    """

    def __init__(self, num_features: int, time_steps: int = 1, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, device=None, dtype=None) -> None:
        nn.BatchNorm2d.__init__(self, num_features, eps, momentum, affine, True, device, dtype)  # (MemoryModule's too)
        self.register_memory("time_step", 0)
        if not isinstance(time_steps, int) or isinstance(time_steps, bool) or time_steps < 1:
            raise ValueError(f"time_steps must be an int >= 1, got {time_steps!r}")
        self.register_buffer("running_mean_t", torch.zeros(time_steps, num_features, device=device, dtype=dtype))
        self.register_buffer("running_var_t", torch.ones(time_steps, num_features, device=device, dtype=dtype))
        self.register_buffer("num_batches_tracked_t", torch.zeros(time_steps, dtype=torch.long, device=device))

    @property
    def time_steps(self) -> int:
        return self.running_mean_t.shape[0]

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if hasattr(self, "running_mean_t"):
            self.running_mean_t.zero_()
            self.running_var_t.fill_(1.0)
            self.num_batches_tracked_t.zero_()

    def forward(self, x: Tensor) -> Tensor:
        t = min(int(self.time_step), self.time_steps - 1)
        self.time_step = self.time_step + 1
        if self.training:
            out = nn.BatchNorm2d.forward(self, x)
            with torch.no_grad():
                var, mean = torch.var_mean(x.detach().to(self.running_mean_t.dtype), dim=(0, 2, 3), correction=1)
                self.num_batches_tracked_t[t] += 1
                factor = (1.0 / self.num_batches_tracked_t[t].to(mean.dtype)) if self.momentum is None \
                    else self.momentum
                self.running_mean_t[t].lerp_(mean, factor)
                self.running_var_t[t].lerp_(var, factor)
            return out
        seen = self.num_batches_tracked_t[t] > 0  # a step never trained reads the pooled statistics (no host sync)
        mean = torch.where(seen, self.running_mean_t[t], self.running_mean)
        var = torch.where(seen, self.running_var_t[t], self.running_var)
        return F.batch_norm(x, mean, var, self.weight, self.bias, False, 0.0, self.eps)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        """A checkpoint of a plain BatchNorm (no per-step statistics) loads with the pooled statistics in every
        slot; one saved with another T keeps its first slots and repeats its last one."""
        mean_key, var_key, count_key = (prefix + n for n in ("running_mean_t", "running_var_t", "num_batches_tracked_t"))
        if mean_key not in state_dict and prefix + "running_mean" in state_dict:
            n = self.time_steps
            state_dict[mean_key] = state_dict[prefix + "running_mean"].reshape(1, -1).repeat(n, 1)
            state_dict[var_key] = state_dict[prefix + "running_var"].reshape(1, -1).repeat(n, 1)
            state_dict[count_key] = torch.zeros(n, dtype=torch.long)  # (not measured per step: eval reads pooled)
        elif mean_key in state_dict and state_dict[mean_key].ndim == 2 and state_dict[mean_key].shape[0] != self.time_steps:
            for key in (mean_key, var_key, count_key):
                saved = state_dict[key]
                index = torch.arange(self.time_steps).clamp(max=saved.shape[0] - 1)
                state_dict[key] = saved.index_select(0, index)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return f"{nn.BatchNorm2d.extra_repr(self)}, time_steps={self.time_steps}"


def use_time_step_batchnorm_(model: nn.Module, time_steps: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` of ``model`` by a :class:`TimeStepBatchNorm2d` with the same parameters and
    statistics (in place; returns ``model``)."""
    for name, child in list(model.named_children()):
        if type(child) is nn.BatchNorm2d and child.track_running_stats:
            new = TimeStepBatchNorm2d(child.num_features, time_steps, child.eps, child.momentum, child.affine,
                                      device=child.running_mean.device, dtype=child.running_mean.dtype)
            new.load_state_dict(child.state_dict())
            setattr(model, name, new)
        else:
            use_time_step_batchnorm_(child, time_steps)
    return model

