"""Parameter routing: binary layers claim their weights; every parameter has one optimizer."""

import pytest
import torch
from torch import nn

from bso_lightning.nn.routing import ParameterSplit, check_partition, split_parameters
from bso_lightning.optim import BSO


class BinaryLinear(nn.Module):
    """Stand-in for a binary layer: claims its weight through binary_parameters()."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n_out, n_in))

    def forward(self, x):
        return x @ self.weight.T

    def binary_parameters(self):
        return [self.weight]


def _model():
    return nn.Sequential(nn.Linear(4, 8), BinaryLinear(8, 8), nn.BatchNorm1d(8), BinaryLinear(8, 3))


def test_split_parameters():
    model = _model()
    split = split_parameters(model)
    assert isinstance(split, ParameterSplit)
    assert split.binary == [model[1].weight, model[3].weight]
    assert split.full_precision == [model[0].weight, model[0].bias, model[2].weight, model[2].bias]


def test_shared_and_frozen_parameters():
    shared = BinaryLinear(8, 8)
    model = nn.Sequential(nn.Linear(4, 8), shared, shared, nn.Linear(8, 2))
    model[3].bias.requires_grad_(False)
    split = split_parameters(model)
    assert split.binary == [shared.weight]
    assert split.full_precision == [model[0].weight, model[0].bias, model[3].weight]


def test_parameter_claimed_by_two_modules():
    class Wrapper(nn.Module):  # a container that also (wrongly) claims its child's weight
        def __init__(self):
            super().__init__()
            self.inner = BinaryLinear(2, 2)

        def binary_parameters(self):
            return [self.inner.weight]

    model = nn.Sequential(nn.Linear(2, 2), Wrapper())
    with pytest.raises(ValueError, match=r"parameter '1\.inner\.weight' is claimed as binary by two modules"):
        split_parameters(model)


def test_claim_of_a_foreign_tensor():
    class Liar(BinaryLinear):
        def binary_parameters(self):
            return [nn.Parameter(torch.ones(5))]

    with pytest.raises(ValueError, match=r"module '0' returned a tensor of shape \[5\] that is not a parameter"):
        split_parameters(nn.Sequential(Liar(2, 2)))


def test_check_partition_accepts_a_split():
    model = _model()
    split = split_parameters(model)
    check_partition(model, [BSO(split.binary), torch.optim.SGD(split.full_precision, lr=0.1)])


def test_check_partition_parameter_in_no_optimizer():
    model = _model()
    split = split_parameters(model)
    with pytest.raises(ValueError, match=r"parameter '2\.bias' is not in any optimizer"):
        check_partition(model, [BSO(split.binary), torch.optim.SGD(split.full_precision[:-1], lr=0.1)])


def test_check_partition_parameter_in_two_optimizers():
    model = _model()
    split = split_parameters(model)
    opts = [BSO(split.binary), torch.optim.SGD(split.full_precision + [model[1].weight], lr=0.1)]
    with pytest.raises(ValueError, match=r"parameter '1\.weight' is claimed more than once: optimizer 0 \(BSO\)"):
        check_partition(model, opts)


def test_check_partition_foreign_parameter():
    model = _model()
    split = split_parameters(model)
    stray = nn.Parameter(torch.zeros(7))
    with pytest.raises(ValueError, match=r"shape \[7\] in optimizer 1 \(SGD\) group 1 is not a parameter of the model"):
        check_partition(
            model,
            [BSO(split.binary), torch.optim.SGD([{"params": split.full_precision}, {"params": [stray]}], lr=0.1)],
        )


def test_frozen_parameters_need_no_optimizer():
    model = _model()
    model[0].bias.requires_grad_(False)
    split = split_parameters(model)
    check_partition(model, [BSO(split.binary), torch.optim.SGD(split.full_precision, lr=0.1)])
