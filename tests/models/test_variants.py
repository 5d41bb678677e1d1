"""Model variants (models/variants.py): the same layout with latent/full-precision weights or BPTT neurons."""

import pytest
import torch

from bso_lightning.models import build_model
from bso_lightning.models.variants import build_variant, convert_neurons, convert_weights
from bso_lightning.nn import BinaryConv2d, BinaryLayer, OnlineConv2d, OnlineLIFNode
from bso_lightning.nn.bptt import BPTTLIFNode
from bso_lightning.nn.latent import LatentBinaryConv2d


def _convs(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_binary_and_online_leave_the_model_as_it_is():
    model = build_model("small_cnn", width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert convert_neurons(convert_weights(model, "binary"), "online") is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("weights, cls", [("latent", LatentBinaryConv2d), ("full_precision", OnlineConv2d)])
def test_swapped_convs_keep_geometry_dtype_and_the_full_precision_layers(weights, cls):
    model = build_model("resnet18", stem="cifar", num_classes=5).double()
    first_conv = _convs(model)[0]
    layout = [(type(m), m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
               m.bias is None) for m in _convs(model)]
    converted = convert_weights(model, weights)
    convs = _convs(converted)
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups, m.bias is None)
            for m in convs] == [entry[1:] for entry in layout]
    for (old_type, *_), new in zip(layout, convs):
        if old_type is BinaryConv2d:
            assert type(new) is cls and new.weight.dtype == torch.float64
        else:
            assert type(new) is old_type  # the first conv and the shortcut 1×1 convs stay as they were
    assert convs[0] is first_conv
    assert not any(isinstance(m, BinaryLayer) for m in converted.modules())
    out = converted(torch.rand(2, 3, 8, 8, dtype=torch.float64))
    assert out.shape == (2, 5)


def test_bptt_neurons_carry_the_neuron_settings():
    model = build_model("small_cnn", width=4, decay=0.25, v_threshold=0.8)
    alpha = 3.0
    for m in model.modules():
        if isinstance(m, OnlineLIFNode):
            m.surrogate_function.alpha = alpha
    n_neurons = sum(isinstance(m, OnlineLIFNode) for m in model.modules())
    converted = convert_neurons(model, "bptt")
    bptt = [m for m in converted.modules() if isinstance(m, BPTTLIFNode)]
    assert len(bptt) == n_neurons
    assert {(m.decay, m.v_threshold, m.surrogate_function.alpha) for m in bptt} == {(0.25, 0.8, alpha)}
    again = convert_neurons(converted, "bptt")  # already BPTT: nothing is replaced again
    assert [m for m in again.modules() if isinstance(m, BPTTLIFNode)] == bptt


def test_unknown_variants_are_refused_by_name():
    with pytest.raises(ValueError, match="weights must be one of"):
        build_variant("small_cnn", weights="ternary")
    with pytest.raises(ValueError, match="neuron must be one of"):
        build_variant("small_cnn", neuron="slow")
    with pytest.raises(ValueError, match="arch must be one of"):
        build_variant("alexnet")
