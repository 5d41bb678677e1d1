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
