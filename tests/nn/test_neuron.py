"""Online LIF neuron (Eq. 2–3) and its traces (Eq. 6–7)."""

import pytest
import torch
from spikingjelly.activation_based import functional

from bso_lightning.nn import OnlineLIFNode, SpikeTrace, ndot_decay


def test_lif_dynamics_soft_reset_and_undecayed_input():
    node = OnlineLIFNode(decay=0.5, v_threshold=1.0)
    inputs = [torch.tensor([0.6, 1.5, -0.2]), torch.tensor([0.6, 0.9, 0.0]), torch.tensor([0.8, 0.2, 0.0])]
    u_prev = torch.zeros(3)
    s_prev = torch.zeros(3)
    for x in inputs:
        out = node(x)
        u = 0.5 * (u_prev - 1.0 * s_prev) + x  # u[t] = λ(u[t−1] − Vth s[t−1]) + I[t]
        s = (u >= 1.0).float()
        torch.testing.assert_close(out.spike, s)
        torch.testing.assert_close(node.v, u - s)  # stored post-reset potential
        u_prev, s_prev = u, s


def test_surrogate_gradient_is_sigmoid_with_alpha_4():
    node = OnlineLIFNode()
    x = torch.tensor([0.3, 1.0, 1.7], requires_grad=True)
    node(x).spike.sum().backward()
    sig = torch.sigmoid(4.0 * (x.detach() - 1.0))
    torch.testing.assert_close(x.grad, 4.0 * sig * (1 - sig))


def test_state_is_detached_between_steps():
    node = OnlineLIFNode()
    x = torch.randn(4, requires_grad=True)
    node(x * 3)
    assert not node.v.requires_grad
    out = node(torch.randn(4, requires_grad=True))
    out.spike.sum().backward()
    assert x.grad is None  # nothing flowed back to step 0


def test_ottt_trace_decays_by_lambda():
    node = OnlineLIFNode(decay=0.5, trace="ottt")
    spikes = []
    trace = torch.zeros(3)
    for x in torch.tensor([[2.0, 0.0, 1.2], [2.0, 0.0, 0.0], [0.0, 5.0, 0.0]]):
        out = node(x)
        trace = 0.5 * trace + out.spike
        spikes.append(out.spike)
        torch.testing.assert_close(out.trace, trace)
    assert sum(s.sum() for s in spikes) > 0


def test_ndot_decay_formula_clamp_and_fallback():
    lam = 0.5
    v = torch.tensor([0.2, 0.9, -0.9, 0.3, 0.4])
    v_prev = torch.tensor([0.8, 0.3, 0.3, 0.0, float("inf")])
    mu = ndot_decay(v, v_prev, lam)
    expected = torch.tensor([0.25, 0.5, -0.5, 0.5, 0.5])  # ratio; clamp high; clamp low; /0 → λ; inf → λ
    torch.testing.assert_close(mu, expected)


def test_ndot_trace_uses_membrane_ratio():
    node = OnlineLIFNode(decay=0.5, trace="ndot")
    x0, x1 = torch.tensor([0.8, 1.4]), torch.tensor([0.1, 0.3])
    out0 = node(x0)
    v0 = node.v.clone()
    out1 = node(x1)
    v1 = node.v.clone()
    mu = ndot_decay(v1, v0, 0.5)
    torch.testing.assert_close(out1.trace, mu * out0.trace + out1.spike)


def test_eval_returns_plain_spikes_and_reset_clears_state():
    node = OnlineLIFNode()
    node.eval()
    out = node(torch.full((2,), 1.5))
    assert isinstance(out, torch.Tensor) and not isinstance(out, SpikeTrace)
    functional.reset_net(node)
    assert node.v == 0.0 and node.trace is None


@pytest.mark.parametrize("kwargs, name", [({"decay": 1.0}, "decay"), ({"decay": 0.0}, "decay"),
                                          ({"v_threshold": 0.0}, "v_threshold"), ({"trace": "bptt"}, "trace")])
def test_bad_arguments_name_the_culprit(kwargs, name):
    with pytest.raises(ValueError, match=name):
        OnlineLIFNode(**kwargs)
