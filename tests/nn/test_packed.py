"""Packed 1-bit binary weights: bit layout, flips by XOR, layers that train exactly like dense ones, state-dict
conversion both ways, and clear errors for bad input."""

import copy
import pickle

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional

from bso_lightning.models import build_model, model_size_bytes
from bso_lightning.nn import BinaryConv2d, BinaryLinear
from bso_lightning.nn.layers import set_weight_storage_
from bso_lightning.nn.packed import PackedBinaryParameter, binary_numel, pack_signs, unpack_signs
from bso_lightning.nn.routing import check_partition, split_parameters
from bso_lightning.optim import BSO, TBSO


def _signs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5, 3, 3), (10, 13)])
def test_bits_are_numpy_packbits_of_the_plus_one_mask_and_round_trip(shape):
    w = _signs(shape)
    bits = pack_signs(w)
    assert bits.dtype == torch.uint8 and bits.numel() == (w.numel() + 7) // 8
    assert np.array_equal(bits.numpy(), np.packbits((w > 0).numpy().reshape(-1)))
    assert torch.equal(unpack_signs(bits, shape), w)
    assert unpack_signs(bits, shape, torch.bfloat16).dtype == torch.bfloat16


def test_flip_is_a_bit_flip_of_exactly_the_masked_weights():
    w = _signs((4, 9))
    p = PackedBinaryParameter.from_signs(w)
    mask = torch.rand(4, 9, generator=torch.Generator().manual_seed(1)) > 0.7
    p.flip_(mask)
    assert torch.equal(p.signs(), torch.where(mask, -w, w))


def test_bad_input_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match=r"layer\.weight .*values other than ±1"):
        pack_signs(torch.tensor([1.0, 0.0, -1.0]), "layer.weight")
    with pytest.raises(ValueError, match="floating-point"):
        pack_signs(torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"uint8 \[2\]"):
        PackedBinaryParameter(torch.zeros(3, dtype=torch.uint8), (9,))  # 9 bits need 2 bytes
    with pytest.raises(ValueError, match=r"uint8"):
        unpack_signs(torch.zeros(2, dtype=torch.int32), (9,))
    layer = BinaryLinear(4, 3)
    with torch.no_grad():
        layer.weight[0, 0] = 0.5
    with pytest.raises(ValueError, match="values other than ±1"):
        layer.to_packed_()


def test_copies_and_pickles_keep_the_logical_shape():
    p = PackedBinaryParameter.from_signs(_signs((6, 5)))
    for q in (copy.deepcopy(p), pickle.loads(pickle.dumps(p))):
        assert isinstance(q, PackedBinaryParameter) and q.logical_shape == (6, 5) and torch.equal(q.signs(), p.signs())


def _model(storage, seed=0):
    torch.manual_seed(seed)
    return set_weight_storage_(build_model("small_cnn", num_classes=10, in_channels=1, width=8), storage)


def test_packed_model_stores_one_bit_per_binary_weight_and_routes_to_the_binary_optimizer():
    dense, packed = _model("dense"), _model("packed")
    binary = split_parameters(packed).binary
    assert all(isinstance(p, PackedBinaryParameter) and not p.requires_grad for p in binary)
    assert sum(p.numel() for p in binary) == sum((p.numel() + 7) // 8 for p in split_parameters(dense).binary)
    assert sum(binary_numel(p) for p in binary) == sum(p.numel() for p in split_parameters(dense).binary)
    assert model_size_bytes(packed) == model_size_bytes(dense)
    opt, sgd = TBSO(binary), torch.optim.SGD(split_parameters(packed).full_precision, lr=0.1)
    check_partition(packed, [opt, sgd])
    with pytest.raises(ValueError, match="not in any optimizer"):
        check_partition(packed, [sgd])


@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_packed_training_flips_exactly_the_weights_dense_training_flips(cls):
    """Same model, same data, 100+ optimizer steps: packed and dense end bit-identical, step by step."""
    dense, packed = _model("dense"), set_weight_storage_(_model("dense"), "packed")
    runs = []
    for model in (dense, packed):
        split = split_parameters(model)
        runs.append((model, cls(split.binary, threshold=1e-7), torch.optim.SGD(split.full_precision, lr=0.05)))
    gen = torch.Generator().manual_seed(3)
    data = [(torch.rand(16, 1, 8, 8, generator=gen), torch.randint(0, 10, (16,), generator=gen)) for _ in range(35)]
    total_flips = 0
    for x, y in data:
        counts = []
        for model, opt, sgd in runs:
            functional.reset_net(model)
            for t in range(3):
                torch.nn.functional.cross_entropy(model(x), y).backward()
                opt.step(time_step=t)
                sgd.step()
                opt.zero_grad()
                sgd.zero_grad()
            counts.append(opt.flip_counts())
        assert torch.equal(counts[0], counts[1])
        total_flips += int(counts[0].sum())
    assert total_flips > 0
    for a, b in zip(split_parameters(dense).binary, split_parameters(packed).binary):
        assert torch.equal(a, b.signs())
    momenta = [[opt.state[p]["momentum"] for p in opt.binary_parameters()] for _, opt, _ in runs]
    assert all(torch.equal(a, b) for a, b in zip(*momenta))


def test_state_dicts_load_across_storages_and_give_the_same_outputs():
    dense, packed = _model("dense", seed=1), _model("packed", seed=2)
    packed.load_state_dict(dense.state_dict())
    back = _model("dense", seed=3)
    back.load_state_dict(packed.state_dict())
    x = torch.rand(4, 1, 8, 8)
    outputs = []
    for model in (dense, packed, back):
        model.eval()
        functional.reset_net(model)
        with torch.no_grad():
            outputs.append(model(x))
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
    bad = dense.state_dict()
    key = next(k for k in bad if k.endswith("weight") and bad[k].dim() == 4 and k != "0.weight")
    bad[key] = bad[key] * 0.5
    with pytest.raises(RuntimeError, match=f"{key}.*values other than ±1"):
        _model("packed").load_state_dict(bad)


def test_packed_layers_match_dense_layers_in_bfloat16():
    conv = BinaryConv2d(3, 4, 3, padding=1).to(torch.bfloat16)
    packed = copy.deepcopy(conv).to_packed_()
    x = torch.rand(2, 3, 5, 5, dtype=torch.bfloat16)
    assert torch.equal(conv(x), packed(x))
    assert packed.weight.dtype == torch.float32 and torch.equal(packed.weight, conv.weight.float())
