"""Errors name the file and the real cause (issue 14, cases 6-10): version folders of concurrent runs, resuming
non-±1 weights, hyper-parameters that do not fit the weights, an explicit other architecture with --ckpt_path,
argument errors as one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bso_lightning.cli import build_cli, main
from bso_lightning.tasks import OnlineClassifier
from bso_lightning.checkpoints import CheckpointError
from tests.reliability.helpers import digits, make_task, make_trainer
from tests.reliability.test_bad_input import TINY


def _edited(tiny_checkpoint: Path, tmp_path: Path, name: str, edit) -> Path:
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    edit(checkpoint)
    path = tmp_path / name
    torch.save(checkpoint, path)
    return path


def test_resuming_weights_that_are_not_plus_minus_one_names_the_file_and_the_weight(tiny_checkpoint, tmp_path):
    """Case 7: it used to fail in the optimizer with advice about full-precision parameters."""
    path = _edited(tiny_checkpoint, tmp_path, "latent.ckpt",
                   lambda c: c["state_dict"]["model.3.weight"].mul_(0.37))
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}: binary weight model\.3\.weight holds values other "
                                              r"than ±1 \(1152 of 1152, e\.g\. -?0\.37.*cannot be resumed.*pretrained"):
        make_trainer(tmp_path, max_epochs=2).fit(make_task(), datamodule=digits(), ckpt_path=path)
    task = make_task(pretrained=str(path))  # as pretrained weights they are mapped to ±1
    assert set(task.model.get_submodule("3").weight.unique().tolist()) == {-1.0, 1.0}


def test_hyper_parameters_that_do_not_fit_the_weights(tiny_checkpoint, tmp_path, monkeypatch):
    """Case 8: a raw load_state_dict RuntimeError before; now the file and the first differing shapes."""
    path = _edited(tiny_checkpoint, tmp_path, "edited.ckpt",
                   lambda c: c["hyper_parameters"].update(arch_kwargs={"width": 16}))
    expected = r"its weights do not fit the model built from its hyper-parameters \(shapes " \
               r"differ \(model\.0\.weight: \[8, 1, 3, 3\] in the file, \[16, 1, 3, 3\] in the model"
    with pytest.raises(CheckpointError, match=expected):
        OnlineClassifier.load_from_checkpoint(path)
    monkeypatch.chdir(tmp_path)
    without_model_args = [a for i, a in enumerate(TINY) if "model" not in a and "model" not in TINY[i - 1]]
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}: {expected}"):  # the CLI builds the model from them
        build_cli(["fit", *without_model_args, "--ckpt_path", str(path)])


def test_an_explicit_other_architecture_with_ckpt_path_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    """Case 9: LightningCLI silently replaced --model.init_args.arch by the checkpoint's."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=rf"checkpoint {tiny_checkpoint}: is resumed with its own architecture and time steps, "
                                              r"but --model\.init_args\.arch='vgg11' \(the checkpoint has 'small_cnn'\)"):
        build_cli(["fit", *TINY, "--ckpt_path", str(tiny_checkpoint), "--model.init_args.arch", "vgg11"])
    assert not (tmp_path / "lightning_logs").exists()


def test_concurrent_runs_in_one_folder_get_their_own_version_folders(tmp_path, monkeypatch):
    """Case 6: both runs used to take version_0. Two CLIs set up before either writes anything: the race window."""
    monkeypatch.chdir(tmp_path)
    first = build_cli(TINY, run=False)
    second = build_cli(TINY, run=False)
    assert (first.trainer.logger.version, second.trainer.logger.version) == (0, 1)
    assert first.trainer.log_dir != second.trainer.log_dir
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0", "version_1"]
    (tmp_path / "lightning_logs" / "version_2").mkdir()  # taken by a third run between listing and claiming
    assert build_cli(TINY, run=False).trainer.logger.version == 3


def test_argument_errors_are_one_line_unless_bso_debug(tmp_path, monkeypatch, capsys):
    """Case 10: the message used to end a ~75-line chained jsonargparse traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BSO_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main(["fit", *TINY, "--model.init_args.optimizer.init_args.threshold", "-1"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("bso-lightning: error: threshold must be a finite number >= 0, got -1.0  "
                       "[ValueError; BSO_DEBUG=1 shows the traceback]"), err
    assert not any("Traceback" in line for line in err)
    monkeypatch.setenv("BSO_DEBUG", "1")
    with pytest.raises(ValueError, match="Does not validate against any of the Union subtypes"):
        main(["fit", *TINY, "--model.init_args.optimizer.init_args.threshold", "-1"])


def test_dense_and_packed_binary_weights_are_not_a_mismatch(tiny_checkpoint, tmp_path):
    """The binary layers convert ``weight`` <-> ``weight_bits`` on load; only real differences are refused."""
    packed = OnlineClassifier.load_from_checkpoint(tiny_checkpoint, weight_storage="packed")
    dense = OnlineClassifier.load_from_checkpoint(tiny_checkpoint)
    x = torch.rand(2, 1, 16, 16)
    assert torch.equal(packed.eval()(x), dense.eval()(x))
    path = _edited(tiny_checkpoint, tmp_path, "extra.ckpt", lambda c: c["state_dict"].update(
        {"model.9.weight": torch.ones(3)}))
    with pytest.raises(CheckpointError, match=r"unexpected model\.9\.weight"):
        OnlineClassifier.load_from_checkpoint(path, weight_storage="packed")


def test_ckpt_path_alone_resumes_whatever_the_cli_defaults(tiny_checkpoint, tmp_path, monkeypatch):
    """Only arguments that differ from the CLI's own defaults count as given: the quick-start default model
    (whatever its width) does not conflict with a checkpoint of another width."""
    monkeypatch.chdir(tmp_path)
    without_model_args = [a for i, a in enumerate(TINY) if "model" not in a and "model" not in TINY[i - 1]]
    cli = build_cli(["fit", *without_model_args, "--ckpt_path", str(tiny_checkpoint)])
    assert cli.model.hparams.arch_kwargs == {"width": 8}
