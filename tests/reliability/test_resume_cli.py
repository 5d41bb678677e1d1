"""Resuming through the CLI (issue 19): `--ckpt_path last`, another T, a fine-tune whose pretrained file is gone,
runs without a logger in one folder, and checkpoints whose hyper-parameters describe a model of any size."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from bso_lightning.cli import build_cli, main, root_cause
from bso_lightning.export import export_checkpoint
from bso_lightning.tasks import OnlineClassifier
from bso_lightning.checkpoints import MAX_MODEL_VALUES, CheckpointError
from tests.reliability.helpers import digits, make_task, make_trainer
from tests.reliability.test_bad_input import TINY


def _checkpoints(root: Path) -> list[Path]:
    return sorted(root.rglob("*.ckpt"))


def test_ckpt_path_last_resumes_the_newest_checkpoint_of_the_root(tmp_path, monkeypatch, capsys):
    """Each run claims a new version folder, so Lightning's own "last" found nothing and trained from scratch."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:  # nothing there yet: one line saying where it looked
        main(["fit", *TINY, "--ckpt_path", "last"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"bso-lightning: error: --ckpt_path last: no checkpoint (*.ckpt) in "
                          f"{tmp_path}/*/version_*/checkpoints/*.ckpt, "), err
    first = build_cli(["fit", *TINY])
    [saved] = _checkpoints(tmp_path)
    resumed = build_cli(["fit", *TINY, "--ckpt_path", "last", "--trainer.max_epochs", "2"])
    assert resumed.trainer.ckpt_path == str(saved)
    assert resumed.trainer.global_step == 2 * first.trainer.global_step  # one more epoch, not two from scratch
    assert resumed.trainer.log_dir != first.trainer.log_dir


def test_runs_without_a_logger_in_one_folder_keep_their_own_checkpoints(tmp_path, monkeypatch):
    """Both runs wrote <root>/checkpoints/epoch=0-step=N.ckpt and interrupted.ckpt under the same names."""
    monkeypatch.chdir(tmp_path)
    runs = [build_cli(["fit", *TINY, "--trainer.logger", "false"]) for _ in range(2)]
    folders = [run.trainer.checkpoint_callback.dirpath for run in runs]
    assert folders == [str(tmp_path / "checkpoints" / "version_0"), str(tmp_path / "checkpoints" / "version_1")]
    for run, folder in zip(runs, folders):
        interrupt = next(c for c in run.trainer.callbacks if type(c).__name__ == "CheckpointOnInterrupt")
        assert Path(interrupt.checkpoint_path(run.trainer)).parent == Path(folder)
    assert [p.parent.name for p in _checkpoints(tmp_path)] == ["version_0", "version_1"]  # nothing overwritten
    resumed = build_cli(["fit", *TINY, "--trainer.logger", "false", "--ckpt_path", "last",
                         "--trainer.max_epochs", "2"])
    assert resumed.trainer.ckpt_path == str(_checkpoints(tmp_path / "checkpoints" / "version_1")[0])


def test_resuming_with_another_time_steps_names_both(tiny_checkpoint, tmp_path, monkeypatch):
    """LightningCLI replaced --model.init_args.time_steps by the checkpoint's without a word."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"is resumed with its own architecture and time steps, but "
                                              r"--model\.init_args\.time_steps=3 \(the checkpoint has 2\)"):
        build_cli(["fit", *TINY, "--ckpt_path", str(tiny_checkpoint), "--model.init_args.time_steps", "3"])
    with pytest.raises(CheckpointError, match=rf"checkpoint {tiny_checkpoint}: was trained with time_steps=2, this "
                                              r"run has time_steps=3: a resumed run keeps its T.*pretrained"):
        make_trainer(tmp_path, max_epochs=2).fit(make_task(time_steps=3, batchnorm_statistics="pooled"),
                                                 datamodule=digits(), ckpt_path=tiny_checkpoint)


def test_an_explicit_time_steps_equal_to_the_default_is_refused_and_an_omitted_one_comes_from_the_checkpoint(
        tiny_checkpoint, tmp_path, monkeypatch):
    """A value equal to the class default (4) could not be told apart from "not given": it was replaced by the
    checkpoint's 2 without a word. Now what the user wrote is read without defaults."""
    import inspect

    assert inspect.signature(OnlineClassifier.__init__).parameters["time_steps"].default == 4  # what this relies on
    monkeypatch.chdir(tmp_path)
    tiny = list(TINY)
    del tiny[tiny.index("--model.init_args.time_steps"):tiny.index("--model.init_args.time_steps") + 2]
    with pytest.raises(CheckpointError, match=r"--model\.init_args\.time_steps=4 \(the checkpoint has 2\)"):
        build_cli(["fit", *tiny, "--ckpt_path", str(tiny_checkpoint), "--model.init_args.time_steps", "4"])
    config = tmp_path / "t4.yaml"  # the same from a --config file
    config.write_text("model:\n  init_args:\n    time_steps: 4\n")
    with pytest.raises(CheckpointError, match=r"--model\.init_args\.time_steps=4 \(the checkpoint has 2\)"):
        build_cli(["fit", "--config", str(config), *tiny, "--ckpt_path", str(tiny_checkpoint)])
    resumed = build_cli(["fit", *tiny, "--ckpt_path", str(tiny_checkpoint), "--trainer.max_epochs", "2"])
    assert resumed.model.hparams.time_steps == 2 and resumed.trainer.ckpt_path == str(tiny_checkpoint)
    same = build_cli(["fit", *TINY, "--ckpt_path", str(tiny_checkpoint), "--trainer.max_epochs", "2"])  # given = saved
    assert same.model.hparams.time_steps == 2


def test_a_resumed_fine_tune_does_not_read_its_pretrained_file(tiny_checkpoint, tmp_path, monkeypatch):
    """The checkpoint's weights win; the pretrained file may be gone (it used to fail naming it)."""
    monkeypatch.chdir(tmp_path)
    pretrained = tmp_path / "pretrained.ckpt"
    shutil.copy(tiny_checkpoint, pretrained)
    build_cli(["fit", *TINY, "--model.init_args.pretrained", str(pretrained)])
    [saved] = _checkpoints(tmp_path / "lightning_logs")
    pretrained.unlink()
    resumed = build_cli(["fit", *TINY, "--ckpt_path", str(saved), "--trainer.max_epochs", "2"])
    assert resumed.trainer.current_epoch == 2
    assert resumed.model.hparams.pretrained == str(pretrained)  # the provenance is kept in its checkpoints
    with pytest.raises(ValueError) as info:  # a new run needs it
        build_cli(["fit", *TINY, "--model.init_args.pretrained", str(pretrained)])
    assert str(root_cause(info.value)) == f"checkpoint {pretrained}: no such file"


@pytest.fixture
def huge_checkpoint(tiny_checkpoint, tmp_path) -> Path:
    """The tiny checkpoint whose hyper-parameters ask for width 200000: 3.6e12 values (14 TB as float32)."""
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["arch_kwargs"] = {"width": 200_000}
    path = tmp_path / "huge.ckpt"
    torch.save(checkpoint, path)
    return path


HUGE = rf"describe a model of 3,600,\d{{3}},\d{{3}},\d{{3}} values, more than the {MAX_MODEL_VALUES:,} allowed"


def test_a_checkpoint_cannot_make_the_cli_build_a_model_of_any_size(huge_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    without_model_args = [a for i, a in enumerate(TINY) if "model" not in a and "model" not in TINY[i - 1]]
    with pytest.raises(CheckpointError, match=rf"checkpoint {huge_checkpoint}: hyper_parameters \(arch='small_cnn', "
                                              rf"arch_kwargs=\{{'width': 200000\}}.*{HUGE}"):
        build_cli(["fit", *without_model_args, "--ckpt_path", str(huge_checkpoint)])
    assert not (tmp_path / "lightning_logs").exists()


def test_nor_load_from_checkpoint_nor_the_export(huge_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match=HUGE):
        OnlineClassifier.load_from_checkpoint(huge_checkpoint)
    with pytest.raises(CheckpointError, match=HUGE):
        export_checkpoint(huge_checkpoint, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_an_integer_factory_argument_out_of_range_is_named(tiny_checkpoint, tmp_path):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["num_classes"] = 10**9
    torch.save(checkpoint, tmp_path / "classes.ckpt")
    with pytest.raises(CheckpointError, match=r"hyper_parameters\.num_classes: 1000000000 is out of range "
                                              r"\[-1000000, 1000000\]; nothing was built"):
        OnlineClassifier.load_from_checkpoint(tmp_path / "classes.ckpt")
