"""``seed_everything`` + ``deterministic: true``: two CLI runs on CPU end bit-for-bit identical."""

from __future__ import annotations

import torch

from bso_lightning.cli import build_cli
from tests.reliability.helpers import BATCHES, EPOCHS, assert_same, cli_args, snapshot


def test_two_seeded_deterministic_cli_runs_are_identical(tmp_path, cli_reference):
    cli = build_cli(cli_args(tmp_path, "--seed_everything", "0"))
    assert torch.are_deterministic_algorithms_enabled() and cli.config.fit.trainer.deterministic is True
    assert cli.trainer.global_step == 2 * 2 * EPOCHS * BATCHES
    second = snapshot(cli.trainer)
    assert_same(cli_reference, second)  # weights, BatchNorm buffers, optimizer state, schedules, metrics
    assert {"train/loss", "train/acc", "val/acc", "val/loss"} <= second["metrics"].keys()
