"""The value passed between online layers during training: spikes plus their presynaptic trace."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor, nn


class SpikeTrace(NamedTuple):
    """Spikes ``s[t]`` of a neuron layer and its presynaptic trace ``â[t]`` (paper Eq. 6–7).

    Online neurons return this in training mode; the next weighted layer computes its output from
    ``spike`` and its weight gradient from ``trace``. In eval mode neurons return plain spike tensors.
    """

    spike: Tensor
    trace: Optional[Tensor]


SpikeInput = Union[Tensor, SpikeTrace]


def split_spike_trace(x: SpikeInput) -> tuple[Tensor, Optional[Tensor]]:
    """Return ``(spike, trace)``; ``trace`` is ``None`` for a plain tensor."""
    if isinstance(x, SpikeTrace):
        return x.spike, x.trace
    return x, None


class SpikeTraceMap(nn.Module):
    """Apply a parameter-free linear op (pooling, flatten) to the spikes and, without grad, to the trace.

    Pooling and flattening are linear, so the trace of the pooled spikes is the pooled trace.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if next(module.parameters(), None) is not None:
            raise ValueError(f"SpikeTraceMap takes parameter-free modules, got {type(module).__name__} with parameters")
        self.module = module

    def forward(self, x: SpikeInput) -> SpikeInput:
        spike, trace = split_spike_trace(x)
        out = self.module(spike)
        if trace is None:
            return out
        with torch.no_grad():
            return SpikeTrace(out, self.module(trace))
