"""Latent-weight binary layers (nn/latent.py): ±1 in the forward pass, straight-through gradient, the trace."""

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bso_lightning.nn import BinaryConv2d, SpikeTrace
from bso_lightning.nn.latent import LatentBinaryConv2d, LatentBinaryLinear, clip_latent_, latent_parameters, sign_ste


def test_linear_forward_uses_the_sign_and_its_weight_gradient_the_trace():
    torch.manual_seed(0)
    layer = LatentBinaryLinear(5, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.linspace(-2.0, 2.0, 15).reshape(3, 5))  # some beyond the STE clip (|w| > 1)
    spike = (torch.rand(4, 5) > 0.5).float()
    trace = torch.rand(4, 5)
    out = layer(SpikeTrace(spike, trace))
    sign = torch.where(layer.weight >= 0, 1.0, -1.0)
    torch.testing.assert_close(out, F.linear(spike, sign))  # the value comes from the spikes
    grad_out = torch.randn(4, 3)
    out.backward(grad_out)
    inside = (layer.weight.detach().abs() <= 1.0).float()
    torch.testing.assert_close(layer.weight.grad, (grad_out.T @ trace) * inside)  # Eq. 6 with the STE mask
    assert inside.min() == 0.0  # the mask did cut something


def test_conv_matches_a_binary_conv_with_the_signed_weights():
    torch.manual_seed(1)
    latent = LatentBinaryConv2d(2, 4, 3, stride=2, padding=1)
    binary = BinaryConv2d(2, 4, 3, stride=2, padding=1)
    with torch.no_grad():
        binary.weight.copy_(torch.where(latent.weight >= 0, 1.0, -1.0))
    x = torch.rand(3, 2, 7, 7)
    torch.testing.assert_close(latent(x), binary(x))
    with torch.no_grad():
        torch.testing.assert_close(latent(x), binary(x))


def test_the_binarised_copy_is_rebuilt_after_an_update_and_per_grad_mode():
    layer = LatentBinaryLinear(3, 2)
    first = layer.binary_weight()
    assert layer.binary_weight() is first
    with torch.no_grad():
        no_grad = layer.binary_weight()
        layer.weight.neg_()  # an optimizer step, in place
    assert no_grad is not first and not no_grad.requires_grad
    flipped = layer.binary_weight()
    assert flipped is not first and torch.equal(flipped, -first)


def test_copies_and_pickles_drop_the_cached_copy():
    layer = LatentBinaryConv2d(1, 2, 3)
    layer(torch.rand(1, 1, 5, 5)).sum()  # the cache now holds a non-leaf tensor
    clone = copy.deepcopy(layer)
    restored = pickle.loads(pickle.dumps(layer))
    for other in (clone, restored):
        assert "_binary_cache" not in other.__dict__
        assert torch.equal(other.weight, layer.weight) and torch.equal(other.binary_weight(), layer.binary_weight())


def test_latent_parameters_lists_each_latent_weight_once_and_nothing_else():
    shared = LatentBinaryLinear(4, 4)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), shared, shared, LatentBinaryConv2d(1, 1, 1))
    params = latent_parameters(model)
    assert [p.shape for p in params] == [shared.weight.shape, (1, 1, 1, 1)]
    assert params[0] is shared.weight


def test_clip_latent_clamps_only_what_lies_outside():
    w = torch.tensor([-3.0, -0.5, 0.0, 0.75, 2.0])
    v = torch.tensor([[1.5, -1.5]])
    clip_latent_([w, v], bound=1.0)
    assert w.tolist() == [-1.0, -0.5, 0.0, 0.75, 1.0] and v.tolist() == [[1.0, -1.0]]
    clip_latent_([])  # nothing to clip


@pytest.mark.parametrize("clip", [0.5, 2.0])
def test_sign_ste_clip_sets_where_the_gradient_passes(clip):
    w = torch.tensor([-1.0, -0.25, 0.25, 1.0], requires_grad=True)
    sign_ste(w, clip).sum().backward()
    assert w.grad.tolist() == [float(abs(v) <= clip) for v in (-1.0, -0.25, 0.25, 1.0)]
