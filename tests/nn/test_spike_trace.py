"""SpikeTrace and SpikeTraceMap (nn/spike_trace.py): linear parameter-free ops map spikes and traces alike."""

import pytest
import torch
from torch import nn

from bso_lightning.nn import SpikeTrace, SpikeTraceMap, split_spike_trace


def test_split_spike_trace_of_a_tensor_and_of_a_spike_trace():
    spike, trace = torch.ones(2), torch.full((2,), 0.5)
    assert split_spike_trace(SpikeTrace(spike, trace)) == (spike, trace)
    s, t = split_spike_trace(spike)
    assert s is spike and t is None


def test_pooling_maps_spikes_with_grad_and_the_trace_without():
    spike = (torch.rand(2, 3, 4, 4) > 0.5).float().requires_grad_()
    trace = torch.rand(2, 3, 4, 4, requires_grad=True)
    pool = SpikeTraceMap(nn.AvgPool2d(2))
    out = pool(SpikeTrace(spike, trace))
    assert isinstance(out, SpikeTrace)
    torch.testing.assert_close(out.spike, nn.functional.avg_pool2d(spike, 2))
    torch.testing.assert_close(out.trace, nn.functional.avg_pool2d(trace, 2))
    assert out.spike.requires_grad and not out.trace.requires_grad  # the trace never carries a graph
    out.spike.sum().backward()
    assert spike.grad is not None and trace.grad is None


def test_plain_tensor_in_plain_tensor_out_and_flatten():
    x = torch.rand(2, 3, 1, 1)
    out = SpikeTraceMap(nn.Flatten())(x)
    assert not isinstance(out, SpikeTrace) and out.shape == (2, 3)
    both = SpikeTraceMap(nn.Flatten())(SpikeTrace(x, 2 * x))
    assert both.spike.shape == both.trace.shape == (2, 3)


def test_a_module_with_parameters_is_refused_by_name():
    with pytest.raises(ValueError, match="Linear"):
        SpikeTraceMap(nn.Linear(2, 2))
