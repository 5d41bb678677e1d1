"""Memory primitives (hand-checked byte counts) and MemoryCallback: the online task's autograd peak is flat in T."""

from __future__ import annotations

import gc
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional
from torch import nn

from bso_lightning.callbacks import (
    AutogradMemoryMeter,
    MemoryCallback,
    ModelSizeCallback,
    cuda_peak_bytes,
    persistent_state_bytes,
)
from bso_lightning.models import model_size_bytes, small_cnn
from bso_lightning.optim import TBSO, CosineAnnealingToZero
from bso_lightning.tasks import OnlineClassifier
from bso_lightning.tasks.loop import OnlineLoop
from datamodules import DigitsDataModule

from .conftest import csv_trainer, read_metrics, rows_with


def test_meter_counts_each_saved_storage_once_and_releases_it():
    x = torch.randn(1000, requires_grad=True)
    meter = AutogradMemoryMeter()
    with meter:
        a = x.exp()  # saves its result a (4000 bytes)
        b = a.sin()  # saves a again: same storage, not counted twice
        c = b.cos()  # saves b (4000 bytes)
        view = c[:10] * 2.0  # mul by a Python scalar saves nothing
    assert meter.current_bytes == 8000 and meter.peak_bytes == 8000
    view.sum().backward()
    assert meter.current_bytes == 0 and meter.peak_bytes == 8000
    meter.reset()
    assert meter.peak_bytes == 0
    assert torch.equal(x.grad, (-torch.sin(torch.sin(x.exp())) * torch.cos(x.exp()) * x.exp()).masked_fill(
        torch.arange(1000) >= 10, 0.0) * 2.0)


def test_meter_releases_a_dropped_graph_without_the_garbage_collector():
    x = torch.randn(256, requires_grad=True)
    meter = AutogradMemoryMeter()
    gc.disable()
    try:
        with meter:
            y = x.exp().exp()
        assert meter.current_bytes == 2 * 1024
        del y  # no backward: the graph is simply dropped (no reference cycle through the meter)
        assert meter.current_bytes == 0
    finally:
        gc.enable()


def test_meter_excludes_the_module_state():
    layer = nn.Linear(100, 50)
    x = torch.randn(8, 100, requires_grad=True)
    with AutogradMemoryMeter(exclude=layer) as meter:
        layer(x).sum().backward()
    assert meter.peak_bytes == x.numel() * 4  # the input; the weight is state, not graph
    with AutogradMemoryMeter() as meter:
        layer(x).sum().backward()
    assert meter.peak_bytes == x.numel() * 4 + layer.weight.numel() * 4


def test_persistent_state_bytes_by_hand():
    model = nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5))
    params = 55 + 10
    buffers = 2 * 5 * 4 + 8  # running mean/var float32, num_batches_tracked int64
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    # no .grad yet: every trainable parameter is counted with a gradient of its own size
    assert persistent_state_bytes(model, [sgd]) == 4 * params * 2 + buffers
    model(torch.randn(4, 10)).sum().backward()
    sgd.step()
    assert persistent_state_bytes(model, [sgd]) == 4 * params * 3 + buffers  # + momentum buffers
    model[0].weight.requires_grad_(False)
    model[0].weight.grad = None
    assert persistent_state_bytes(model, []) == 4 * params * 2 - 4 * 50 + buffers


def test_cuda_peak_bytes_rejects_other_devices():
    with pytest.raises(ValueError, match="CUDA"):
        cuda_peak_bytes(torch.device("cpu"))


def _graph_kept_peak(time_steps: int) -> int:
    """A loop that keeps every time step's graph until one backward (no online update)."""
    torch.manual_seed(0)
    model = small_cnn(width=8)
    x, y = torch.rand(16, 1, 16, 16), torch.randint(0, 10, (16,))
    functional.reset_net(model)
    with AutogradMemoryMeter(exclude=model) as meter:
        total = sum(model(x) for _ in range(time_steps))
        F.cross_entropy(total / time_steps, y).backward()
    return meter.peak_bytes


def _online_run(tmp_path, time_steps: int):
    task = OnlineClassifier(arch="small_cnn", arch_kwargs={"width": 8}, time_steps=time_steps,
                            lr_scheduler=partial(CosineAnnealingToZero, epochs=2), bn_recalibration_batches=0)
    memory = MemoryCallback()
    trainer = csv_trainer(tmp_path, [memory, ModelSizeCallback()], max_epochs=2, limit_train_batches=2)
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=16))
    return task, trainer, read_metrics(tmp_path)


def test_online_autograd_peak_is_flat_in_T_and_graph_kept_loop_grows(tmp_path):
    peaks = {}
    for time_steps in (1, 4):
        task, trainer, rows = _online_run(tmp_path / f"T{time_steps}", time_steps)
        memory = rows_with(rows, "memory/peak_autograd_bytes")
        assert [row["epoch"] for row in memory] == [0, 1]  # one row per training epoch
        row = memory[-1]
        assert row["memory/time_steps"] == time_steps
        assert row["memory/state_bytes"] == persistent_state_bytes(task, trainer.optimizers)
        assert row["memory/peak_train_bytes"] == row["memory/peak_autograd_bytes"] + row["memory/state_bytes"]
        assert row["memory/peak_rss_bytes"] > row["memory/peak_train_bytes"]
        assert "memory/cuda_peak_bytes" not in row  # CPU run
        peaks[time_steps] = row["memory/peak_autograd_bytes"]

        size = rows_with(rows, "model/size_bytes")
        assert len(size) == 1  # logged once
        binary = 8 * 16 * 9 + 16 * 32 * 9  # the two hidden 3x3 convs of small_cnn(width=8)
        full_precision = 1 * 8 * 9 + 2 * (8 + 16 + 32) + 32 * 10 + 10  # first conv, BatchNorm affine, classifier
        assert size[0]["model/binary_params"] == binary
        assert size[0]["model/full_precision_params"] == full_precision
        assert size[0]["model/size_bytes"] == binary / 8 + 4 * full_precision == model_size_bytes(task.model)

    assert peaks[1] > 0
    assert abs(peaks[4] - peaks[1]) <= 0.03 * peaks[1]  # online: the graph of one time step at a time
    kept = {t: _graph_kept_peak(t) for t in (1, 4)}
    assert kept[1] == pytest.approx(peaks[1], rel=0.05)  # same graph for T = 1 (same batch size)
    assert kept[4] > 3.5 * kept[1]  # keeping the graph across T grows ~linearly


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_is_logged(tmp_path):
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats(device)
    block = torch.empty(2**20, dtype=torch.uint8, device=device)
    assert cuda_peak_bytes(device) >= block.numel()
    del block
    task = OnlineClassifier(arch="small_cnn", arch_kwargs={"width": 8}, time_steps=2,
                            lr_scheduler=partial(CosineAnnealingToZero, epochs=1), bn_recalibration_batches=0)
    trainer = csv_trainer(tmp_path, [MemoryCallback()], accelerator="gpu", max_epochs=1, limit_train_batches=2)
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=16))
    row = rows_with(read_metrics(tmp_path), "memory/cuda_peak_bytes")[-1]
    assert row["memory/cuda_peak_bytes"] >= row["memory/peak_autograd_bytes"] > 0


def test_compact_storage_keeps_the_autograd_peak_flat_in_T_and_halves_it(tmp_path):
    """Packed weights + bfloat16 saved activations: still one time step's graph at a time, at about half the bytes
    (the large float32 saved tensors are held in bfloat16; small ones and the parameters stay)."""
    peaks = {}
    for options in ("dense", "compact"):
        for time_steps in (1, 4):
            extra = {} if options == "dense" else dict(weight_storage="packed",
                                                        optimizer=partial(TBSO, momentum_dtype="bfloat16"),
                                                        loop=OnlineLoop(saved_activation_dtype="bfloat16"))
            task = OnlineClassifier(arch="small_cnn", arch_kwargs={"width": 8}, time_steps=time_steps,
                                    lr_scheduler=partial(CosineAnnealingToZero, epochs=1), bn_recalibration_batches=0,
                                    **extra)
            memory = MemoryCallback()
            trainer = csv_trainer(tmp_path / f"{options}{time_steps}", [memory], max_epochs=1, limit_train_batches=2)
            trainer.fit(task, datamodule=DigitsDataModule(batch_size=16))
            peaks[options, time_steps] = memory.last_metrics["memory/peak_autograd_bytes"]
    assert abs(peaks["compact", 4] - peaks["compact", 1]) <= 0.03 * peaks["compact", 1]
    assert 0.4 * peaks["dense", 4] < peaks["compact", 4] < 0.7 * peaks["dense", 4]
