"""A crafted checkpoint's code never runs (issue 14, case 1): every path that reads a user-given checkpoint
uses ``torch.load(weights_only=True)``; the full unpickle is an explicit opt-in that no check performs."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from bso_lightning.cli import build_cli, root_cause
from bso_lightning.export import main as export_main
from bso_lightning.tasks import OnlineClassifier
from bso_lightning.checkpoints import CheckpointError, check_checkpoint
from tests.reliability.helpers import digits, make_task, make_trainer
from tests.reliability.test_bad_input import TINY


class WritesMarker:
    """Unpickling this object creates ``path`` (``open(path, "w")``): the payload of a hostile checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def hostile(tiny_checkpoint, tmp_path) -> tuple[Path, Path]:
    """A real, loadable checkpoint with one extra entry whose unpickling writes ``marker``."""
    marker = tmp_path / "payload_ran"
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["extra"] = WritesMarker(marker)
    path = tmp_path / "hostile.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(pickle.UnpicklingError):  # the file is what it claims: a full unpickle would run it
        torch.load(path, weights_only=True)
    assert not marker.exists()
    return path, marker


def test_the_checkpoint_check_does_not_run_it(hostile):
    path, marker = hostile
    with pytest.raises(CheckpointError, match=r"holds objects that are not tensors or plain values \(refused: Unsupported global: GLOBAL io\.open\)"
                                              r".*--weights_only false") as info:
        check_checkpoint(path)
    assert str(path) in str(info.value)
    check_checkpoint(path, trusted=True)  # the opt-in skips the unpickle instead of doing it
    assert not marker.exists()


def test_ckpt_path_on_the_command_line_does_not_run_it(hostile, tmp_path, monkeypatch):
    path, marker = hostile
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="holds objects that are not tensors"):
        build_cli(["fit", *TINY, "--ckpt_path", str(path)])
    assert not marker.exists() and not (tmp_path / "lightning_logs").exists()


def test_pretrained_does_not_run_it(hostile, tmp_path, monkeypatch):
    path, marker = hostile
    with pytest.raises(CheckpointError, match="holds objects that are not tensors"):
        make_task(pretrained=str(path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:  # jsonargparse wraps the error of the model's constructor
        build_cli(["fit", *TINY, "--model.init_args.pretrained", str(path)])
    cause = root_cause(info.value)
    assert isinstance(cause, CheckpointError) and "holds objects that are not tensors" in str(cause)
    assert not marker.exists()


def test_export_does_not_run_it(hostile, tmp_path, capsys):
    path, marker = hostile
    assert export_main([str(path), str(tmp_path / "model.bso")]) == 1
    assert "holds objects that are not tensors" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "model.bso").exists()


def test_lightning_own_loading_does_not_run_it(hostile, tmp_path):
    """Lightning 2.6.6 passes ``weights_only=None`` to ``torch.load``, which means True on torch >= 2.6."""
    path, marker = hostile
    with pytest.raises(pickle.UnpicklingError):
        make_trainer(tmp_path, max_epochs=1).fit(make_task(), datamodule=digits(), ckpt_path=path)
    with pytest.raises(CheckpointError, match=r"refused: Unsupported global: GLOBAL io\.open"):
        OnlineClassifier.load_from_checkpoint(path)  # our override reads the hyper-parameters first (size bounds)
    assert not marker.exists()


def test_our_own_checkpoints_load_with_weights_only(tiny_checkpoint):
    """Hyper-parameters, extras and optimizer state are plain values and tensors: no allowlist is needed."""
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    assert checkpoint["hyper_parameters"]["arch"] == "small_cnn" and "online_classifier" in checkpoint
    check_checkpoint(tiny_checkpoint)


def test_cli_checkpoints_load_with_weights_only(tmp_path, monkeypatch):
    """What LightningCLI adds to the hyper-parameters (``_instantiator``, ...) is plain values too."""
    monkeypatch.chdir(tmp_path)
    build_cli(["fit", *TINY])
    (path,) = (tmp_path / "lightning_logs").rglob("*.ckpt")
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["arch_kwargs"] == {"width": 8}
    check_checkpoint(path)


def test_a_class_path_in_the_hyper_parameters_is_refused_before_anything_is_imported(tiny_checkpoint, tmp_path,
                                                                                    monkeypatch, capsys):
    """(``import this`` prints the Zen of Python: a module's import runs its code.)"""
    import sys

    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "this.Nothing"
    path = tmp_path / "class_path.ckpt"
    torch.save(checkpoint, path)
    monkeypatch.delitem(sys.modules, "this", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"name the model class .this.Nothing., which is not a LightningModule "
                                              r"loaded in this process; nothing was imported"):
        build_cli(["fit", *TINY, "--ckpt_path", str(path)])
    assert "this" not in sys.modules and "Zen of Python" not in capsys.readouterr().out


def test_random_bytes_are_called_damaged_not_hostile(tmp_path):
    """Random bytes are no pickle: reported as truncated/corrupt, without torch's advice to unpickle it fully."""
    import numpy as np

    path = tmp_path / "random.ckpt"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError, match=r"cannot be read \(UnpicklingError: .*\); it is truncated or corrupt") as info:
        check_checkpoint(path)
    assert "weights_only=False" not in str(info.value) and "not tensors" not in str(info.value)
