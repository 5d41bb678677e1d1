"""Online LIF neuron with a presynaptic trace (paper Eq. 2–3, 6–7), on spikingjelly's ``LIFNode``.

    u[t] = λ · (u[t−1] − Vth · s[t−1]) + I[t]        (soft reset, input not decayed)
    s[t] = H(u[t] − Vth)                             (sigmoid surrogate, α = 4)
    â[t] = μ[t] · â[t−1] + s[t]                      (trace of the output spikes)

``ottt``: μ = λ. ``ndot``: μ[t] = (u[t] − Vth·s[t]) / (u[t−1] − Vth·s[t−1]), clamped to [−λ, λ],
λ where the denominator is (near) zero (|·| ≤ 1e-6) or the ratio is not finite (the paper's NDOT).
``ndot_reference``: the decay the authors' code (``hamingsi/BSO``, ``modules/neuron.py``) computes — it
subtracts Vth·s from a potential that was already reset, so
μ[t] = (u[t] − 2·Vth·s[t]) / (u[t−1] − 2·Vth·s[t−1]), clamped to [−λ, λ], λ only where the denominator
is exactly 0 or a value is not finite (their ``safe_divide``; a tiny non-zero denominator gives ±λ through
the clamp). u is the pre-reset potential throughout. The membrane state is detached between steps (no
backprop through time), so no graph of step t−1 outlives step t.
"""

from __future__ import annotations

import math
import numbers
from typing import Literal, Optional

import torch
from spikingjelly.activation_based import surrogate
from spikingjelly.activation_based.neuron import LIFNode
from torch import Tensor

from bso_lightning.nn.spike_trace import SpikeTrace

TraceMode = Literal["ottt", "ndot", "ndot_reference", "none"]
TRACE_MODES = ("ottt", "ndot", "ndot_reference", "none")
NDOT_EPS = 1e-6


def ndot_decay(v_post: Tensor, v_post_prev: Tensor, decay: float, eps: float = NDOT_EPS) -> Tensor:
    """NDOT trace decay μ[t] = v_post[t] / v_post[t−1], clamped to [−λ, λ]; λ where undefined.

    Undefined: |v_post[t−1]| ≤ ``eps`` (``eps=0``: exactly zero), or a value that is not finite.
    """
    ratio = v_post / v_post_prev
    valid = (v_post_prev.abs() > eps) & torch.isfinite(ratio) & torch.isfinite(v_post_prev)
    return torch.where(valid, ratio.clamp(-decay, decay), torch.full_like(ratio, decay))


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class OnlineLIFNode(LIFNode):
    """Single-step LIF neuron for online training; returns :class:`SpikeTrace` in training mode.

    Args:
        decay: λ, the membrane decay per step (τ = 1 / (1 − λ)); paper default 0.5.
        v_threshold: Vth; paper default 1.
        trace: ``"ottt"`` (μ = λ), ``"ndot"`` (μ from the membrane dynamics, paper), ``"ndot_reference"``
            (the authors' code: Vth·s subtracted twice, see the module docstring) or ``"none"``.
        surrogate_alpha: slope α of the sigmoid surrogate; paper default 4.
    """

    def __init__(self, decay: float = 0.5, v_threshold: float = 1.0, trace: TraceMode = "ottt",
                 surrogate_alpha: float = 4.0) -> None:
        if not _is_number(decay) or not 0.0 < decay < 1.0:
            raise ValueError(f"decay (λ) must lie in (0, 1), got {decay!r}")
        if not _is_number(v_threshold) or not 0.0 < v_threshold < math.inf:  # inf: nothing would ever spike
            raise ValueError(f"v_threshold must be a finite number > 0, got {v_threshold!r}")
        if not _is_number(surrogate_alpha) or not 0.0 < surrogate_alpha < math.inf:
            raise ValueError(f"surrogate_alpha must be a finite number > 0, got {surrogate_alpha!r}")
        if trace not in TRACE_MODES:
            raise ValueError(f"trace must be one of {TRACE_MODES}, got {trace!r}")
        super().__init__(
            tau=1.0 / (1.0 - decay),
            decay_input=False,
            v_threshold=v_threshold,
            v_reset=None,
            surrogate_function=surrogate.Sigmoid(alpha=surrogate_alpha),
            detach_reset=True,
            step_mode="s",
        )
        self.decay = decay
        self.trace_mode = trace
        self.register_memory("trace", None)
        if trace == "ndot_reference":
            self.register_memory("ndot_numerator", None)  # u[t−1] − 2·Vth·s[t−1], the next step's denominator

    def single_step_functional_forward(self, inputs, states, **kwargs):
        x = inputs[0]
        v_prev = states[0].detach()
        trace_prev: Optional[Tensor] = states[1]
        # Eq. 2–3 written out (two fused ops; spikingjelly's generic lif_step is ~2× slower on CPU)
        u = torch.add(x, v_prev, alpha=self.decay)  # u[t] = λ·(u[t−1] − Vth·s[t−1]) + I[t]
        spike = self.surrogate_function(u - self.v_threshold)
        with torch.no_grad():
            v = u - self.v_threshold * spike  # soft reset; stored detached
        if self.trace_mode == "ndot_reference":
            return self._reference_forward(spike, v, trace_prev, states[2])
        if not self.training or self.trace_mode == "none":
            return (spike,), (v, None)
        with torch.no_grad():
            trace = self._next_trace(spike.detach(), v, v_prev, trace_prev)
        return (SpikeTrace(spike, trace),), (v, trace)

    def _reference_forward(self, spike: Tensor, v: Tensor, trace_prev: Optional[Tensor],
                           numerator_prev: Optional[Tensor]):
        """``ndot_reference``: μ[t] = q[t] / q[t−1] with q[t] = u[t] − 2·Vth·s[t] = v[t] − Vth·s[t]."""
        if not self.training:
            return (spike,), (v, None, None)
        with torch.no_grad():
            spike_d = spike.detach()
            numerator = v - self.v_threshold * spike_d
            if trace_prev is None or trace_prev.shape != spike.shape or numerator_prev is None:
                trace = spike_d.clone()
            else:
                trace = trace_prev * ndot_decay(numerator, numerator_prev, self.decay, eps=0.0) + spike_d
        return (SpikeTrace(spike, trace),), (v, trace, numerator)

    def _next_trace(self, spike: Tensor, v: Tensor, v_prev: Tensor, trace_prev: Optional[Tensor]) -> Tensor:
        if trace_prev is None or trace_prev.shape != spike.shape:
            return spike.clone()
        mu = self.decay if self.trace_mode == "ottt" else ndot_decay(v, v_prev, self.decay)
        return trace_prev * mu + spike

    def extra_repr(self) -> str:
        return f"decay={self.decay}, v_threshold={self.v_threshold}, trace={self.trace_mode!r}"
