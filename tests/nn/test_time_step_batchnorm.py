"""TimeStepBatchNorm2d: trains as nn.BatchNorm2d, evaluates each time step with its own statistics."""

from __future__ import annotations

import pytest
import torch
from spikingjelly.activation_based import functional
from torch import nn
from torch.optim.swa_utils import update_bn

from bso_lightning.models import build_model
from bso_lightning.nn.time_step_batchnorm import (
    TimeStepBatchNorm2d, use_time_step_batchnorm_,
)


def _steps(n: int = 3, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(8, 4, 5, 5, generator=g) * (1 + t) + 2.0 * t for t in range(n)]  # other statistics per step


def test_training_output_and_pooled_statistics_are_plain_batchnorm():
    bn, ref = TimeStepBatchNorm2d(4, time_steps=3), nn.BatchNorm2d(4)
    for _ in range(2):
        for x in _steps():
            assert torch.equal(bn(x), ref(x))
        functional.reset_net(nn.Sequential(bn))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(bn, name), getattr(ref, name))


def test_eval_normalises_each_step_with_its_own_statistics():
    bn = TimeStepBatchNorm2d(4, time_steps=3, momentum=None)  # cumulative: the per-step statistics exactly
    xs = _steps()
    for x in xs:
        bn(x)
    assert bn.time_step == 3
    functional.reset_net(nn.Sequential(bn))
    assert bn.time_step == 0
    bn.eval()
    for t, x in enumerate(xs):
        out = bn(x)
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
        torch.testing.assert_close(bn.running_mean_t[t], mean)
        torch.testing.assert_close(out.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    # a plain BatchNorm with pooled statistics mis-normalises the steps (what per-step statistics fix)
    pooled = nn.BatchNorm2d(4, momentum=None)
    for x in xs:
        pooled(x)
    pooled.eval()
    assert pooled(xs[0]).mean().abs() > 0.5


def test_steps_past_the_last_slot_use_the_last_and_untrained_slots_read_the_pooled_statistics():
    bn = TimeStepBatchNorm2d(4, time_steps=2, momentum=None)
    xs = _steps(3)
    bn(xs[0])
    bn.eval()
    functional.reset_net(nn.Sequential(bn))
    bn(xs[0])  # slot 0: trained
    second = bn(xs[1])  # slot 1: never trained -> pooled statistics (= slot 0's here)
    torch.testing.assert_close(second, nn.functional.batch_norm(xs[1], bn.running_mean, bn.running_var, bn.weight,
                                                                bn.bias, False, 0.0, bn.eps))
    assert bn(xs[2]).shape == xs[2].shape  # step 2 >= slots: the last slot, no error


def test_update_bn_re_estimates_every_slot_and_state_dicts_convert():
    model = use_time_step_batchnorm_(nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), time_steps=3)
    bn = model[1]
    assert isinstance(bn, TimeStepBatchNorm2d)

    def run_all_steps(x):  # what the classifiers' forward does: reset, T steps
        functional.reset_net(model)
        for x_t in _steps(3, seed=int(x.sum()) % 7):
            model(x_t)

    class Loop(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            run_all_steps(x)

    update_bn([torch.ones(1) * k for k in range(3)], Loop())
    assert (bn.num_batches_tracked_t == 3).all()  # each slot a cumulative average over the 3 inputs
    # a plain BatchNorm state dict (an older checkpoint) fills every slot with the pooled statistics
    plain = nn.BatchNorm2d(4)
    plain.running_mean.fill_(0.5)
    fresh = TimeStepBatchNorm2d(4, time_steps=3)
    fresh.load_state_dict(plain.state_dict())
    assert torch.equal(fresh.running_mean_t, torch.full((3, 4), 0.5))
    # another T keeps the first slots and repeats the last
    short = TimeStepBatchNorm2d(4, time_steps=5)
    short.load_state_dict(bn.state_dict())
    assert torch.equal(short.running_mean_t[4], bn.running_mean_t[2])


def test_build_model_and_invalid_time_steps():
    model = build_model("small_cnn", batchnorm_time_steps=4)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(isinstance(m, TimeStepBatchNorm2d) and m.time_steps == 4 for m in norms)
    assert not any(isinstance(m, TimeStepBatchNorm2d) for m in build_model("small_cnn").modules())
    with pytest.raises(ValueError, match="time_steps must be an int >= 1"):
        TimeStepBatchNorm2d(4, time_steps=0)
