"""Paper models: layout, binary/full-precision split and model size (DESIGN.md §1)."""

import pytest
import torch
from torch import nn

from bso_lightning.models import build_model, model_size_bytes, resnet18, small_cnn, vgg11
from bso_lightning.nn import BinaryConv2d, OnlineConv2d, OnlineLIFNode, OnlineLinear
from bso_lightning.optim import split_parameters


def test_vgg11_model_size_matches_paper():
    assert model_size_bytes(vgg11(num_classes=10)) == 1_201_448  # 1.20 MB
    assert round(model_size_bytes(vgg11(num_classes=100)) / 1e6, 2) == 1.39


def test_vgg11_layout():
    model = vgg11(num_classes=10, in_channels=3)
    convs = [m for m in model if isinstance(m, OnlineConv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512, 512, 512]
    assert not isinstance(convs[0], BinaryConv2d) and all(isinstance(c, BinaryConv2d) for c in convs[1:])
    assert all(c.bias is None for c in convs)
    modules = list(model)
    for i, m in enumerate(modules):
        if isinstance(m, OnlineConv2d):
            assert isinstance(modules[i + 1], nn.BatchNorm2d) and isinstance(modules[i + 2], OnlineLIFNode)
    assert isinstance(modules[-1], OnlineLinear) and not hasattr(modules[-1], "binary_parameters")
    split = split_parameters(model)
    assert len(split.binary) == 7
    assert all(set(p.unique().tolist()) <= {-1.0, 1.0} for p in split.binary)


@pytest.mark.parametrize("factory, shape", [(lambda: vgg11(10, 3), (2, 3, 32, 32)),
                                            (lambda: resnet18(10, 3, stem="cifar"), (2, 3, 32, 32)),
                                            (lambda: resnet18(7, 3), (1, 3, 64, 64)),
                                            (lambda: small_cnn(10, 1), (2, 1, 16, 16))])
def test_forward_shapes_train_and_eval(factory, shape):
    model = factory()
    x = torch.rand(shape)
    out = model(x)
    assert out.shape == (shape[0], model[-1].out_features)
    out.sum().backward()
    model.eval()
    with torch.no_grad():
        assert model(x).shape == out.shape


def test_resnet18_split_and_size():
    model = resnet18(num_classes=1000)
    split = split_parameters(model)
    assert len(split.binary) == 16  # one binary 3×3 conv per Bi-Real unit
    # 1 bit per binary weight + 4 bytes per full-precision parameter; the paper reports 4.22 MB
    assert 4.1e6 < model_size_bytes(model) < 4.3e6


def test_build_model_rejects_unknown_arch():
    with pytest.raises(ValueError, match="arch"):
        build_model("alexnet")
