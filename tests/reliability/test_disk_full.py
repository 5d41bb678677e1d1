"""A full disk while saving a checkpoint (issue 19): the checkpoint's name keeps the previous complete file (or
none), no temporary file is left, and the CLI reports one line. Lightning's own save copies a temporary file
across filesystems and left a truncated checkpoint under its real name (bso_lightning.checkpoint_io)."""

from __future__ import annotations

import errno

import pytest
import torch

from bso_lightning import checkpoint_io
from bso_lightning.checkpoint_io import AtomicCheckpointIO
from bso_lightning.cli import build_cli, main
from bso_lightning.checkpoints import check_checkpoint
from tests.reliability.helpers import cli_args, digits, make_task, make_trainer


def _disk_fills_after(monkeypatch, n_bytes: int) -> None:
    """``torch.save`` in the checkpoint writer writes ``n_bytes`` of the file, then fails as a full disk does."""
    real_save = torch.save

    def save(obj, path):
        real_save(obj, path)
        with open(path, "r+b") as f:
            f.truncate(n_bytes)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(checkpoint_io.torch, "save", save)


def test_a_full_disk_keeps_the_previous_checkpoint_complete(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "model.ckpt"
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                           plugins=[AtomicCheckpointIO()])
    trainer.fit(make_task(), datamodule=digits())
    trainer.save_checkpoint(path)
    complete = path.read_bytes()
    _disk_fills_after(monkeypatch, len(complete) // 2)
    with pytest.raises(OSError, match="No space left on device"):
        trainer.save_checkpoint(path)
    assert path.read_bytes() == complete
    check_checkpoint(path)
    assert [p.name for p in path.parent.iterdir()] == ["model.ckpt"]  # no temporary file left


def test_the_cli_saves_atomically_and_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    ok = build_cli(cli_args(tmp_path / "ok", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"))
    assert isinstance(ok.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert [p.name for p in (tmp_path / "ok").rglob("*.ckpt")] == ["epoch=0-step=8.ckpt"]
    _disk_fills_after(monkeypatch, 1000)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(cli_args(tmp_path / "full", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2"))
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("bso-lightning: error: [Errno 28] No space left on device"), err[-3:]
    assert not [p for p in (tmp_path / "full").rglob("*.ckpt*")]  # no truncated checkpoint, no temporary file
