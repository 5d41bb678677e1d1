"""The trace-gradient op (paper Eq. 6–7): one forward on spikes, weight gradient from the trace.

For a layer ``y = op(s_in; W)`` that is linear in its input, the online weight gradient at step t is
``G[t] = ζ[t] · â_in[t]ᵀ`` with ``ζ[t] = ∂L[t]/∂y[t]``. The custom autograd Functions below compute the
forward value from the spikes once and save the trace (not the spikes) for the backward; the input
gradient is the ordinary one. (The reference implementation runs every op twice instead.)
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def _match(t: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    return t if t is None or t.dtype == dtype else t.to(dtype)


class TraceConv2dFunction(torch.autograd.Function):
    """``conv2d(spikes, weight, bias)`` whose weight gradient uses ``trace`` in place of ``spikes``."""

    @staticmethod
    def forward(ctx, spikes: Tensor, trace: Tensor, weight: Tensor, bias: Optional[Tensor],
                stride: tuple, padding: tuple, dilation: tuple, groups: int) -> Tensor:
        ctx.save_for_backward(trace, weight)
        ctx.conv_args = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        return F.conv2d(spikes, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        trace, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        needs_input, _, needs_weight, needs_bias = ctx.needs_input_grad[:4]
        work_dtype = grad_out.dtype
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_out,
            _match(trace, work_dtype),
            _match(weight, work_dtype),
            [weight.shape[0]] if ctx.has_bias else None,
            stride, padding, dilation, False, [0, 0], groups,
            [needs_input, needs_weight, needs_bias and ctx.has_bias],
        )
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        if grad_bias is not None:
            grad_bias = grad_bias.to(weight.dtype)
        return grad_input, None, grad_weight, grad_bias, None, None, None, None


class TraceLinearFunction(torch.autograd.Function):
    """``linear(spikes, weight, bias)`` whose weight gradient uses ``trace`` in place of ``spikes``."""

    @staticmethod
    def forward(ctx, spikes: Tensor, trace: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        ctx.save_for_backward(trace, weight)
        ctx.has_bias = bias is not None
        return F.linear(spikes, weight, bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        trace, weight = ctx.saved_tensors
        needs_input, _, needs_weight, needs_bias = ctx.needs_input_grad[:4]
        grad_input = grad_weight = grad_bias = None
        if needs_input:
            grad_input = grad_out @ _match(weight, grad_out.dtype)
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        if needs_weight:
            flat_trace = _match(trace, grad_out.dtype).reshape(-1, trace.shape[-1])
            grad_weight = (flat_grad.t() @ flat_trace).to(weight.dtype)
        if needs_bias and ctx.has_bias:
            grad_bias = flat_grad.sum(0).to(weight.dtype)
        return grad_input, None, grad_weight, grad_bias


def trace_conv2d(spikes: Tensor, trace: Tensor, weight: Tensor, bias: Optional[Tensor] = None,
                 stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """Functional form of :class:`TraceConv2dFunction` (int or pair arguments, like ``F.conv2d``)."""
    pair = torch.nn.modules.utils._pair
    return TraceConv2dFunction.apply(spikes, trace, weight, bias, pair(stride), pair(padding), pair(dilation), groups)


def trace_linear(spikes: Tensor, trace: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """Functional form of :class:`TraceLinearFunction`."""
    return TraceLinearFunction.apply(spikes, trace, weight, bias)


# --------------------------------------------------------------------------- packed binary weights
#
# The weight is a PackedBinaryParameter (bits). Forward and backward each unpack it to ±1 in the compute dtype
# for the one op and drop it (it is not saved for the backward); the weight gradient is handed to the parameter
# (``deliver_grad``), which may step BSO/T-BSO right there and free it.


class PackedTraceConv2dFunction(torch.autograd.Function):
    """``conv2d(spikes, ±1 weight from bits, bias)``; weight gradient from ``trace``, delivered to the bits."""

    @staticmethod
    def forward(ctx, spikes: Tensor, trace: Tensor, anchor: Tensor, bias: Optional[Tensor], packed,
                stride: tuple, padding: tuple, dilation: tuple, groups: int) -> Tensor:
        ctx.save_for_backward(trace)
        ctx.packed, ctx.conv_args, ctx.has_bias = packed, (stride, padding, dilation, groups), bias is not None
        weight = packed.signs(spikes.dtype)
        return F.conv2d(spikes, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (trace,) = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv_args
        weight = ctx.packed.signs(grad_out.dtype)
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_out, _match(trace, grad_out.dtype), weight, [weight.shape[0]] if ctx.has_bias else None,
            stride, padding, dilation, False, [0, 0], groups,
            [ctx.needs_input_grad[0], True, ctx.needs_input_grad[3] and ctx.has_bias])
        del weight
        ctx.packed.deliver_grad(grad_weight)
        return grad_input, None, None, grad_bias, None, None, None, None, None


class PackedTraceLinearFunction(torch.autograd.Function):
    """``linear(spikes, ±1 weight from bits, bias)``; weight gradient from ``trace``, delivered to the bits."""

    @staticmethod
    def forward(ctx, spikes: Tensor, trace: Tensor, anchor: Tensor, bias: Optional[Tensor], packed) -> Tensor:
        ctx.save_for_backward(trace)
        ctx.packed, ctx.has_bias = packed, bias is not None
        return F.linear(spikes, packed.signs(spikes.dtype), bias)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (trace,) = ctx.saved_tensors
        grad_input = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_input = grad_out @ ctx.packed.signs(grad_out.dtype)
        flat_grad = grad_out.reshape(-1, grad_out.shape[-1])
        flat_trace = _match(trace, grad_out.dtype).reshape(-1, trace.shape[-1])
        ctx.packed.deliver_grad(flat_grad.t() @ flat_trace)
        if ctx.needs_input_grad[3] and ctx.has_bias:
            grad_bias = flat_grad.sum(0)
        return grad_input, None, None, grad_bias, None


def _grad_anchor(spikes: Tensor) -> Tensor:
    """An empty leaf that requires grad, so the op's backward runs (and delivers G) like a dense weight's would."""
    return torch.empty(0, device=spikes.device, requires_grad=True)


def packed_conv2d(spikes: Tensor, trace: Optional[Tensor], packed, bias: Optional[Tensor], stride, padding,
                  dilation, groups: int) -> Tensor:
    """Convolution with a packed binary weight; the weight gradient uses ``trace`` (or the spikes if None)."""
    if not torch.is_grad_enabled():
        return F.conv2d(spikes, packed.signs(spikes.dtype), bias, stride, padding, dilation, groups)
    return PackedTraceConv2dFunction.apply(spikes, spikes if trace is None else trace, _grad_anchor(spikes), bias,
                                           packed, stride, padding, dilation, groups)


def packed_linear(spikes: Tensor, trace: Optional[Tensor], packed, bias: Optional[Tensor]) -> Tensor:
    """Linear layer with a packed binary weight; the weight gradient uses ``trace`` (or the input if None)."""
    if not torch.is_grad_enabled():
        return F.linear(spikes, packed.signs(spikes.dtype), bias)
    return PackedTraceLinearFunction.apply(spikes, spikes if trace is None else trace, _grad_anchor(spikes), bias,
                                           packed)
