"""BatchNorm re-estimation (nn/batchnorm.py): a plain average over the first finite batches, state restored."""

import torch
from torch import nn

from bso_lightning.nn.batchnorm import recalibrate_batchnorm


def _batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 3, 4, 4, generator=g) * (i + 1) + i for i in range(n)]


def test_statistics_are_the_plain_average_of_the_batch_statistics():
    bn = nn.BatchNorm2d(3, momentum=0.3)
    bn.running_mean.fill_(100.0)
    bn.eval()
    batches = _batches(4)
    assert recalibrate_batchnorm(bn, iter(batches), max_batches=10) == 4
    means = torch.stack([b.mean(dim=(0, 2, 3)) for b in batches])
    variances = torch.stack([b.transpose(0, 1).flatten(1).var(dim=1, unbiased=True) for b in batches])
    torch.testing.assert_close(bn.running_mean, means.mean(0))  # cumulative average, not momentum-weighted
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    assert bn.num_batches_tracked.item() == 4
    assert bn.momentum == 0.3 and not bn.training  # momentum and mode restored


def test_only_the_first_max_batches_are_read_and_non_finite_ones_are_left_out():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    batches = _batches(6)
    batches[1] = batches[1].clone()
    batches[1][0, 0, 0, 0] = float("nan")
    stream = iter(batches)
    assert recalibrate_batchnorm(model, stream, max_batches=3) == 2  # batches 0 and 2; batch 1 holds a NaN
    assert next(stream) is batches[3]  # nothing read past the cap
    reference = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    reference.load_state_dict(model.state_dict())
    recalibrate_batchnorm(reference, iter([batches[0], batches[2]]), max_batches=2)
    torch.testing.assert_close(model[1].running_mean, reference[1].running_mean)
    assert torch.isfinite(model[1].running_var).all()
    assert model.training  # the training mode it had


def test_zero_batches_changes_nothing():
    bn = nn.BatchNorm1d(2)
    bn.running_mean.fill_(5.0)
    stream = iter([torch.randn(4, 2)])
    assert recalibrate_batchnorm(bn, stream, max_batches=0) == 0
    assert bn.running_mean.tolist() == [5.0, 5.0] and next(stream) is not None
