"""The trace-gradient op: forward on spikes, weight gradient ζ·âᵀ from the trace, ordinary input gradient."""

import torch
import torch.nn.functional as F

from bso_lightning.nn import OnlineConv2d, OnlineLinear, SpikeTrace, trace_conv2d, trace_linear


def _spikes_and_trace(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    spikes = (torch.rand(shape, generator=g) > 0.6).float()
    trace = spikes + 0.5 * (torch.rand(shape, generator=g) > 0.5).float()  # differs from the spikes
    return spikes, trace


def test_linear_forward_equals_plain_op_and_weight_grad_is_zeta_trace():
    spikes, trace = _spikes_and_trace((5, 7))
    weight = torch.randn(3, 7, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)
    s = spikes.clone().requires_grad_(True)
    out = trace_linear(s, trace, weight, bias)
    torch.testing.assert_close(out, F.linear(spikes, weight, bias))
    zeta = torch.randn(5, 3)
    out.backward(zeta)
    torch.testing.assert_close(weight.grad, zeta.t() @ trace)  # G = ζ · âᵀ, summed over the batch
    torch.testing.assert_close(bias.grad, zeta.sum(0))
    torch.testing.assert_close(s.grad, zeta @ weight.detach())  # ordinary input gradient


def test_conv_forward_equals_plain_op_and_gradients_by_hand():
    spikes, trace = _spikes_and_trace((2, 3, 6, 6), seed=1)
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    s = spikes.clone().requires_grad_(True)
    out = trace_conv2d(s, trace, weight, None, stride=1, padding=1)
    torch.testing.assert_close(out, F.conv2d(spikes, weight, padding=1))
    zeta = torch.randn_like(out)
    out.backward(zeta)
    # reference: the same conv applied to the trace, differentiated by autograd, gives ζ·âᵀ
    w_ref = weight.detach().clone().requires_grad_(True)
    F.conv2d(trace, w_ref, padding=1).backward(zeta)
    torch.testing.assert_close(weight.grad, w_ref.grad)
    # the input gradient is the ordinary one (it does not depend on the input)
    s_ref = spikes.clone().requires_grad_(True)
    F.conv2d(s_ref, weight.detach(), padding=1).backward(zeta)
    torch.testing.assert_close(s.grad, s_ref.grad)
    # and differs from the plain spike-based weight gradient (the trace matters)
    w_plain = weight.detach().clone().requires_grad_(True)
    F.conv2d(spikes, w_plain, padding=1).backward(zeta)
    assert not torch.allclose(weight.grad, w_plain.grad)


def test_strided_conv_with_bias():
    spikes, trace = _spikes_and_trace((2, 2, 7, 7), seed=2)
    layer = OnlineConv2d(2, 3, 3, stride=2, padding=1, bias=True)
    out = layer(SpikeTrace(spikes, trace))
    torch.testing.assert_close(out, F.conv2d(spikes, layer.weight, layer.bias, stride=2, padding=1))
    zeta = torch.randn_like(out)
    out.backward(zeta)
    w_ref = layer.weight.detach().clone().requires_grad_(True)
    b_ref = layer.bias.detach().clone().requires_grad_(True)
    F.conv2d(trace, w_ref, b_ref, stride=2, padding=1).backward(zeta)
    torch.testing.assert_close(layer.weight.grad, w_ref.grad)
    torch.testing.assert_close(layer.bias.grad, b_ref.grad)


def test_plain_tensor_input_uses_ordinary_op():
    layer = OnlineLinear(4, 2)
    x = torch.randn(3, 4)
    layer(x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, torch.ones(3, 2).t() @ x)


def test_weight_gradient_uses_the_authors_ndot_trace():
    """An ``ndot_reference`` neuron feeding an online linear layer: G[t] = ζ[t] · â[t]ᵀ with the authors' â.

    One presynaptic neuron, λ = 0.5, Vth = 1, inputs I = 0.8, 0.9, 0.1 (hand-computed in test_neuron):
    â = 0, 1, −0.25/0.7; the paper's NDOT gives â[2] = 0.5, OTTT 0.5 as well.
    """
    from bso_lightning.nn import OnlineLIFNode

    node = OnlineLIFNode(decay=0.5, v_threshold=1.0, trace="ndot_reference")
    layer = OnlineLinear(1, 1, bias=False)
    for x in (0.8, 0.9, 0.1):
        layer.zero_grad()
        out = layer(node(torch.tensor([[x]])))
        out.backward(torch.tensor([[2.0]]))  # ζ = 2
    torch.testing.assert_close(layer.weight.grad, torch.tensor([[2.0 * -0.25 / 0.7]]))
