"""Binary layers: exactly ±1 from construction, bias-free, no latent weights."""

import torch

from bso_lightning.nn import BinaryConv2d, BinaryLinear, binarize_


def test_weights_are_plus_minus_one_from_construction():
    for layer in (BinaryConv2d(3, 8, 3), BinaryLinear(10, 4)):
        assert set(layer.weight.unique().tolist()) <= {-1.0, 1.0}
        assert layer.bias is None
        assert list(layer.binary_parameters()) == [layer.weight]
        assert set(layer.state_dict()) == {"weight"}  # no latent copy


def test_binarize_maps_zero_to_plus_one():
    w = torch.tensor([0.0, -0.0, 2.0, -3.0, 1e-30])
    binarize_(w)
    assert w.tolist() == [1.0, 1.0, 1.0, -1.0, 1.0]


def test_bias_when_asked_is_full_precision():
    layer = BinaryLinear(4, 2, bias=True)
    assert list(layer.binary_parameters()) == [layer.weight]
