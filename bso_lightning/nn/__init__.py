"""Binary layers, online LIF neurons with presynaptic traces, and the trace-gradient op."""

from bso_lightning.nn.layers import BinaryConv2d, BinaryLayer, BinaryLinear, OnlineConv2d, OnlineLinear, binarize_
from bso_lightning.nn.neuron import OnlineLIFNode, ndot_decay
from bso_lightning.nn.spike_trace import SpikeTrace, SpikeTraceMap, split_spike_trace
from bso_lightning.nn.trace_ops import TraceConv2dFunction, TraceLinearFunction, trace_conv2d, trace_linear

__all__ = [
    "BinaryConv2d", "BinaryLayer", "BinaryLinear", "OnlineConv2d", "OnlineLinear", "binarize_",
    "OnlineLIFNode", "ndot_decay", "SpikeTrace", "SpikeTraceMap", "split_spike_trace",
    "TraceConv2dFunction", "TraceLinearFunction", "trace_conv2d", "trace_linear",
]
