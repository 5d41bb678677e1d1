"""StemPool: the pooling factor follows the input size; small_cnn keeps its weight names."""

from __future__ import annotations

import pytest
import torch

from bso_lightning.models import build_model
from bso_lightning.nn.pooling import StemPool


@pytest.mark.parametrize("size, factor, out", [(8, 1, 8), (16, 1, 16), (17, 2, 8), (28, 2, 14), (32, 2, 16),
                                               (48, 3, 16), (224, 14, 16)])
def test_factor_brings_the_map_to_at_most_max_size(size, factor, out):
    pool = StemPool(16)
    assert pool.factor(size, size) == factor
    x = torch.rand(2, 3, size, size)
    y = pool(x)
    assert y.shape[-2:] == (out, out)
    torch.testing.assert_close(y, x if factor == 1 else torch.nn.functional.avg_pool2d(x, factor))


def test_average_of_each_block():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    torch.testing.assert_close(StemPool(2)(x), torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))


def test_small_cnn_keeps_weight_names_and_accepts_any_size():
    pooled = build_model("small_cnn")
    plain = build_model("small_cnn", stem_max_size=None)
    assert list(pooled.state_dict()) == list(plain.state_dict())  # older checkpoints load into the new default
    assert "stem_pool" in dict(pooled.named_children()) and "stem_pool" not in dict(plain.named_children())
    pooled.eval()
    for size in (8, 16, 28, 33):
        assert pooled(torch.rand(2, 1, size, size)).shape == (2, 10)


def test_bad_max_size():
    with pytest.raises(ValueError, match="max_size must be an int >= 1"):
        StemPool(0)
