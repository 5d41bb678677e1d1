"""The BPTT neuron (nn/bptt.py): spikingjelly's LIF dynamics, with the membrane's gradient kept through time."""

import pytest
import torch
from spikingjelly.activation_based import functional, surrogate
from spikingjelly.activation_based.neuron import LIFNode

from bso_lightning.nn import OnlineLIFNode
from bso_lightning.nn.bptt import BPTTLIFNode


def _run(node, steps: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = [(torch.randn(16, 8, generator=g) * 1.5).requires_grad_() for _ in range(steps)]
    functional.reset_net(node)
    outs = [node(x) for x in xs]
    weights = torch.randn(steps, generator=g)
    sum(w * o.sum() for w, o in zip(weights, outs)).backward()
    return [o.detach() for o in outs], node.v.detach(), [x.grad for x in xs]


@pytest.mark.parametrize("decay", [0.5, 0.25, 0.9])
def test_same_spikes_and_membrane_as_spikingjelly_lif(decay):
    """Forward bit for bit; the input gradients agree to float rounding (spikingjelly's fused multi-step backward
    sums in another order, which is why the baseline keeps the online neuron's step)."""
    ours = _run(BPTTLIFNode(decay=decay))
    reference = _run(LIFNode(tau=1.0 / (1.0 - decay), decay_input=False, v_reset=None, detach_reset=True,
                             surrogate_function=surrogate.Sigmoid(alpha=4.0)))
    assert all(torch.equal(a, b) for a, b in zip(ours[0], reference[0]))
    assert sum(o.sum() for o in ours[0]) > 0  # the comparison saw spikes
    for a, b in zip(ours[2], reference[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if decay == 0.5:
        assert torch.equal(ours[1], reference[1])


def test_gradient_through_one_time_step_is_the_surrogate_times_the_decay():
    """s[1] = H(λ·(u[0] − Vth·s[0]) + x[1] − Vth), reset detached: ∂s[1]/∂x[0] = σ'(u[1] − Vth) · λ."""
    decay, alpha = 0.5, 4.0
    node = BPTTLIFNode(decay=decay, surrogate_alpha=alpha)
    x0 = torch.tensor([0.3, 1.4, 2.5], requires_grad=True)
    x1 = torch.tensor([0.9, 0.2, -0.4])
    node(x0)
    node(x1).sum().backward()
    u0 = x0.detach()
    u1 = decay * (u0 - (u0 >= 1.0).float()) + x1
    sig = torch.sigmoid(alpha * (u1 - 1.0))
    torch.testing.assert_close(x0.grad, alpha * sig * (1 - sig) * decay)


def test_eval_mode_returns_plain_spikes_and_reset_clears_the_graph():
    node = BPTTLIFNode().eval()
    out = node(torch.full((2,), 1.5))
    assert isinstance(out, torch.Tensor) and out.tolist() == [1.0, 1.0]
    assert isinstance(node, OnlineLIFNode) and node.trace_mode == "none"
    functional.reset_net(node)
    assert float(node.v) == 0.0
