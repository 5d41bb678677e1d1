"""LIF neuron for backpropagation through time (the BPTT baseline), on spikingjelly's ``LIFNode``.

Same dynamics as :class:`OnlineLIFNode` (paper Eq. 2–3: λ = 0.5, Vth = 1, soft reset, sigmoid surrogate
α = 4, reset detached) but the membrane potential is **not** detached between steps: the autograd graph of
every time step stays alive until the backward after the last step, so training memory grows with T.
It returns plain spike tensors (no presynaptic trace).
"""

from __future__ import annotations

import torch

from bso_lightning.nn.neuron import OnlineLIFNode


class BPTTLIFNode(OnlineLIFNode):
    """Single-step LIF neuron whose state keeps its gradient across time steps (BPTT)."""

    # kept instead of spikingjelly's LIFNode(tau=2., decay_input=False, v_reset=None, detach_reset=True,
    # surrogate_function=Sigmoid(4.)): same spikes and membrane bit for bit, but its input gradients differ in the
    # last bits (tests/nn/test_bptt.py) — this step is the online neuron's minus the detach, so BPTT vs BSO differ
    # only in the gradient through time

    def __init__(self, decay: float = 0.5, v_threshold: float = 1.0, surrogate_alpha: float = 4.0) -> None:
        super().__init__(decay=decay, v_threshold=v_threshold, trace="none", surrogate_alpha=surrogate_alpha)

    def single_step_functional_forward(self, inputs, states, **kwargs):
        # the online neuron's step (Eq. 2–3) without its detach: u[t] keeps the graph of u[t−1]
        u = torch.add(inputs[0], states[0], alpha=self.decay)  # u[t] = λ·(u[t−1] − Vth·s[t−1]) + I[t]
        spike = self.surrogate_function(u - self.v_threshold)
        v = u - self.v_threshold * spike.detach()  # soft reset, reset path detached (as the online neuron)
        return (spike,), (v, None)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, v_threshold={self.v_threshold}, bptt=True"


__all__ = ["BPTTLIFNode"]
