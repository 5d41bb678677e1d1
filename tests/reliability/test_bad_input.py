"""Bad input fails before training with a message naming the culprit, and writes nothing."""

from __future__ import annotations

import shutil

from functools import partial
from pathlib import Path

import pytest
import torch

from bso_lightning.cli import build_cli
from bso_lightning.models import ARCHITECTURES
from bso_lightning.optim import BSO, TBSO, CosineAnnealingToZero, FullPrecisionSGD
from bso_lightning.checkpoints import CheckpointError
from datamodules import DataFileError, DatasetNotFoundError
from tests.reliability.helpers import digits, make_task, make_trainer

TINY = ["--model.init_args.arch_kwargs", '{"width": 8}', "--model.init_args.time_steps", "2",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--test_after_fit", "false"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """An empty working directory (the CLI's default root) whose content is compared after the failure."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _fails(workdir: Path, args: list[str], error: type[BaseException], *culprits: str, capsys=None,
           new_log_version: bool = False) -> None:
    """``bso-lightning fit`` fails with ``error`` naming every culprit and writes nothing (with
    ``new_log_version``: nothing but the logger's files of a new, empty run version)."""
    before = _files(workdir)
    with pytest.raises(error) as info:
        build_cli(["fit", *TINY, *args])
    message = str(info.value) + (capsys.readouterr().err if capsys is not None else "")
    for culprit in culprits:
        assert culprit in message, message[-2000:]
    after = _files(workdir)
    if new_log_version:
        assert all(name.startswith("lightning_logs/version_0/") and not name.endswith(".ckpt")
                   for name in after.keys() - before.keys()), sorted(after)
        after = {name: data for name, data in after.items() if name in before}
    assert after == before, "something was written"


# --------------------------------------------------------------------------- hyper-parameters


@pytest.mark.parametrize("args, culprits", [
    (["--model.init_args.optimizer.init_args.threshold", "-1"], ["threshold must be a finite number >= 0, got -1.0"]),
    (["--model.init_args.time_steps", "0"], ["time_steps must be an integer >= 1, got 0"]),
    (["--model.init_args.optimizer.init_args.betas", "[0.999, 1.0]"], ["betas[1] must be in [0, 1), got 1.0"]),
], ids=["threshold", "time_steps", "betas"])
def test_invalid_hyper_parameter_on_the_command_line(workdir, args, culprits):
    _fails(workdir, args, ValueError, *culprits)


def test_invalid_hyper_parameter_in_yaml_and_an_argument_of_the_other_optimizer(workdir, capsys):
    config = workdir / "bad.yaml"
    config.write_text("model:\n  class_path: bso_lightning.tasks.OnlineClassifier\n  init_args:\n    optimizer:\n"
                      "      class_path: bso_lightning.optim.BSO\n      init_args: {beta: 1.5}\n")
    _fails(workdir, ["--config", str(config)], ValueError, "beta must be in [0, 1), got 1.5")
    config.write_text("model:\n  class_path: bso_lightning.tasks.OnlineClassifier\n  init_args:\n    optimizer:\n"
                      "      class_path: bso_lightning.optim.TBSO\n      init_args: {beta: 0.9}\n")  # (BSO's, not T-BSO's)
    _fails(workdir, ["--config", str(config)], SystemExit, "beta", capsys=capsys)


FP_SGD = "fp_optimizer: {class_path: bso_lightning.optim.FullPrecisionSGD, init_args: {%s}}"


@pytest.mark.parametrize("setting, culprit", [
    ("arch_kwargs: {v_threshold: .inf}", "v_threshold must be a finite number > 0, got inf"),  # nothing would spike
    ("arch_kwargs: {v_threshold: .nan}", "v_threshold must be a finite number > 0, got nan"),
    ("arch_kwargs: {decay: 1.0}", "decay (λ) must lie in (0, 1), got 1.0"),
    (FP_SGD % "lr: .nan", "lr must be a finite number >= 0, got nan"),
    (FP_SGD % "lr: .inf", "lr must be a finite number >= 0, got inf"),
    (FP_SGD % "momentum: .nan", "momentum must be a finite number >= 0, got nan"),
    (FP_SGD % "weight_decay: -.inf", "weight_decay must be a finite number >= 0, got -inf"),
    ("lr_scheduler: {class_path: bso_lightning.optim.CosineAnnealingToZero, init_args: {epochs: -5}}",
     "epochs must be an integer >= 1 (or None: trainer.max_epochs), got -5"),
    ("schedule: {class_path: bso_lightning.optim.InverseSqrtSchedule, init_args: {scale: .inf}}",
     "scale must be a finite number > 0, got inf"),
], ids=["v_threshold_inf", "v_threshold_nan", "decay", "lr_nan", "lr_inf", "momentum", "weight_decay", "epochs",
        "scale"])
def test_non_finite_or_out_of_range_float_in_yaml_is_refused_at_construction(workdir, setting, culprit):
    """(issue 19) YAML's ``.inf``/``.nan`` reach the constructor as floats; refused there, one line naming them."""
    config = workdir / "bad.yaml"
    config.write_text(f"model:\n  class_path: bso_lightning.tasks.OnlineClassifier\n  init_args:\n    {setting}\n")
    _fails(workdir, ["--config", str(config)], ValueError, culprit)


@pytest.mark.parametrize("cls", ["OTTTClassifier", "BPTTLatentClassifier"])
@pytest.mark.parametrize("kwargs, culprit", [
    ({"arch_kwargs": {"width": 8, "v_threshold": float("inf")}}, "v_threshold must be a finite"),
    ({"fp_optimizer": partial(FullPrecisionSGD, lr=float("nan"))}, "lr must be a finite number >= 0, got nan"),
    ({"lr_scheduler": partial(CosineAnnealingToZero, epochs=0)}, "epochs must be an integer >= 1")])
def test_the_baselines_refuse_them_too(cls, kwargs, culprit):
    import bso_lightning.tasks as tasks

    with pytest.raises(ValueError, match=culprit.replace("(", r"\(")):
        getattr(tasks, cls)(**{"arch_kwargs": {"width": 8}, **kwargs})


def test_latent_lr_of_the_bptt_baseline_must_be_finite():
    from bso_lightning.tasks import BPTTLatentClassifier

    with pytest.raises(ValueError, match="latent_optimizer.lr must be a finite number >= 0, got inf"):
        BPTTLatentClassifier(arch_kwargs={"width": 8}, latent_optimizer=partial(torch.optim.Adam, lr=float("inf")))


@pytest.mark.parametrize("key, value", [("optimizer", "adam"), ("loop.nonfinite", "ignore")])
def test_unknown_choice_is_a_parser_error_naming_the_key(workdir, capsys, key, value):
    _fails(workdir, [f"--model.init_args.{key}", value], SystemExit, f'Parser key "{key}"', value, capsys=capsys)


def test_parser_errors_are_not_buried_under_the_usage(workdir, capsys):
    """Issue 14, case 10: the error used to follow a ~40-line usage of every option."""
    with pytest.raises(SystemExit):
        build_cli(["fit", "--model.init_args.optimizer", "adam"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage: ") and err[0].endswith(" fit [options]") and len(err) < 15, err
    assert any("Expected a dot import path string: adam" in line for line in err)


def test_model_without_binary_parameters(workdir, monkeypatch):
    def full_precision_only(num_classes, in_channels, **_):
        return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 4, 3), torch.nn.Flatten(),
                                   torch.nn.LazyLinear(num_classes))

    monkeypatch.setitem(ARCHITECTURES, "fp_only", full_precision_only)
    _fails(workdir, ["--model.init_args.arch", "fp_only"], ValueError,
           "arch 'fp_only' has no binary parameters for TBSO to train")
    with pytest.raises(ValueError, match="BSO got an empty parameter list"):
        BSO([])
    weight = torch.nn.Parameter(torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"parameter 0 \(shape \[3, 3\]\) holds values other than ±1"):
        TBSO([weight])


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture
def checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """A copy of the session's tiny checkpoint (``tiny_checkpoint``) outside the working directory: tests may damage it."""
    copy = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    shutil.copyfile(tiny_checkpoint, copy)
    return copy


@pytest.mark.parametrize("kwargs, mismatch", [
    ({"arch_kwargs": {"width": 16}}, "arch_kwargs: checkpoint {'width': 8}, model {'width': 16}"),
    ({"optimizer": BSO}, "optimizer: checkpoint 'tbso', model 'bso'"),
])
def test_checkpoint_of_another_architecture(workdir, checkpoint, kwargs, mismatch):
    """The module refuses it in ``on_load_checkpoint``, naming the file and the mismatch, before any weight is
    loaded. (``bso-lightning fit --ckpt_path`` rebuilds the model from the checkpoint's hyper-parameters.)"""
    saved = checkpoint.read_bytes()
    with pytest.raises(CheckpointError) as info:
        make_trainer(workdir, max_epochs=1).fit(make_task(**kwargs), datamodule=digits(), ckpt_path=checkpoint)
    assert f"checkpoint {checkpoint}: was written by a different architecture ({mismatch})" in str(info.value)
    assert checkpoint.read_bytes() == saved and not any(workdir.iterdir())


@pytest.mark.parametrize("damage", ["truncated", "empty", "missing"])
def test_unreadable_checkpoint_file(workdir, checkpoint, damage):
    path = checkpoint.with_name(f"{damage}.ckpt")
    if damage == "truncated":  # e.g. the job was killed while saving
        path.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    reason = {"truncated": "truncated or corrupt", "empty": "is empty", "missing": "no such file"}[damage]
    _fails(workdir, ["--ckpt_path", str(path)], CheckpointError, f"checkpoint {path}", reason)


# --------------------------------------------------------------------------- datasets


def _cifar(root: Path) -> list[str]:
    return ["--data", "datamodules.CIFAR10DataModule", "--data.root", str(root), "--data.batch_size", "4"]


def test_dataset_folder_missing(workdir):
    root = workdir.parent / "no_data_here"
    _fails(workdir, _cifar(root), DatasetNotFoundError, f"CIFAR-10 not found in {root / 'cifar-10-batches-py'}",
           "folder does not exist", "download=True")
    assert not root.exists()


@pytest.mark.parametrize("damage", ["file missing", "file truncated"])
def test_dataset_folder_half_written(workdir, cifar10_root, damage):
    folder = cifar10_root / "cifar-10-batches-py"
    if damage == "file missing":
        (folder / "data_batch_5").unlink()
        error, culprits = DatasetNotFoundError, [str(folder), "missing data_batch_5"]
    else:
        data = (folder / "data_batch_2").read_bytes()
        (folder / "data_batch_2").write_bytes(data[: len(data) // 3])
        error, culprits = DataFileError, [f"cannot read {folder / 'data_batch_2'}"]
    before = _files(cifar10_root)
    # the files are read in setup(), after the logger has opened a new run version: that is all that is written
    _fails(workdir, _cifar(cifar10_root), error, *culprits, new_log_version=damage == "file truncated")
    assert _files(cifar10_root) == before
