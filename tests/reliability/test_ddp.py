"""Multi-process DDP (gloo, 2 CPU processes) through ``bso-lightning fit``: the ranks end identical."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.reliability.helpers import REPO, assert_same


def _console_script() -> list[str]:
    script = Path(sys.executable).with_name("bso-lightning")
    return [str(script)] if script.exists() else [sys.executable, "-m", "bso_lightning.cli"]


@pytest.mark.parametrize("storage, momentum_dtype", [("dense", "float32"), ("packed", "bfloat16"), ("packed", "int8")])
def test_ddp_on_two_cpu_processes_keeps_the_ranks_identical(tmp_path, storage, momentum_dtype):
    """Packed weights: DDP does not reduce their gradient (it is no ``.grad``), the classifier all-reduces it before
    the step; ranks that train on different data stay bit-identical only if both flip with the averaged G."""
    dump = tmp_path / "dump"
    command = [
        *_console_script(), "fit",
        "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
        "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.log_every_n_steps", "1", "--trainer.default_root_dir", str(tmp_path / "run"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.init_args.arch_kwargs", '{"width": 8}', "--model.init_args.time_steps", "2",
        "--model.init_args.bn_recalibration_batches", "2", "--data.init_args.batch_size", "16",
        "--test_after_fit", "false", "--model.init_args.weight_storage", storage,
        "--model.init_args.optimizer.init_args.momentum_dtype", momentum_dtype,
        "--trainer.callbacks+=bso_lightning.callbacks.FlipRateCallback",
        "--trainer.callbacks+=bso_lightning.callbacks.MemoryCallback",
        "--trainer.callbacks+=tests.reliability.helpers.DumpState", "--trainer.callbacks.dirpath", str(dump),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    ranks = [torch.load(dump / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]

    # same binary weights, full-precision weights, BatchNorm statistics (recalibrated before validation),
    # optimizer state (momentum, per-t second moments) and schedules on both processes
    # BatchNorm running statistics are per process: DDP broadcasts them from rank 0 before every forward, and each
    # process then updates them with its own batch (validation no longer overwrites them with re-estimated ones)
    running = ("running_mean", "running_var", "num_batches_tracked", "running_mean_t", "running_var_t",
               "num_batches_tracked_t")  # (per-time-step statistics: the same, per step)
    models = [{k: v for k, v in r["model"].items() if not k.endswith(running)} for r in ranks]
    assert len(models[0]) < len(ranks[0]["model"])
    assert_same(models[0], models[1], "model")
    for key in ("optimizers", "schedulers", "global_step"):
        assert_same(ranks[0][key], ranks[1][key], key)
    assert ranks[0]["momentum_dtypes"] == [f"torch.{momentum_dtype}"] * 2
    # metrics reduced over the processes: accuracy (torchmetrics) and the evaluation loss (sync_dist)
    for key in ("train/acc", "val/acc", "val/loss"):
        assert torch.equal(ranks[0]["metrics"][key], ranks[1]["metrics"][key]), key

    # the data: each process trains on its own share of the epoch-seeded order, a new order every epoch
    for epoch in (0, 1):
        shares = [{h for e, batch in r["batches"] if e == epoch for h in batch} for r in ranks]
        assert len(shares[0]) == len(shares[1]) == 2 * 16 and not shares[0] & shares[1]
    for r in ranks:
        assert {h for e, b in r["batches"] if e == 0 for h in b} != {h for e, b in r["batches"] if e == 1 for h in b}

    # telemetry: flip rates agree (identical steps on both processes); memory is reduced with max
    assert ranks[0]["flip_history"] and ranks[0]["flip_history"] == ranks[1]["flip_history"]
    assert ranks[0]["memory"] == ranks[1]["memory"]
    assert ranks[0]["memory"]["memory/time_steps"] == 2 and ranks[0]["memory"]["memory/peak_rss_bytes"] > 0
