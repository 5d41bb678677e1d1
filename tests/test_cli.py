"""The bso-lightning command: help, defaults equal to configs/quickstart.yaml, and the quick start end to end."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bso_lightning.cli import build_cli
from bso_lightning.tasks import OnlineClassifier

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "bso_lightning.cli"]


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_help_works(subcommand, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_cli([subcommand, "--help"])
    assert exit_info.value.code == 0
    assert "--model" in capsys.readouterr().out


def _printed_config(args, capsys) -> dict:
    with pytest.raises(SystemExit):
        build_cli(["fit", *args, "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


def test_no_argument_defaults_are_the_quickstart_config(capsys):
    defaults = _printed_config([], capsys)
    from_file = _printed_config(["--config", str(REPO / "configs" / "quickstart.yaml")], capsys)
    assert defaults == from_file
    assert defaults["model"]["init_args"]["optimizer"] == "tbso"
    assert defaults["data"]["class_path"] == "datamodules.DigitsDataModule"


def test_quickstart_end_to_end(tmp_path):
    """`bso-lightning fit` with no arguments: test accuracy >= 97% and a checkpoint with ±1 weights."""
    result = subprocess.run(CLI + ["fit", "--trainer.enable_progress_bar", "false"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    match = re.search(r"test/acc\s+│?\s*([0-9.]+)", result.stdout)
    assert match, result.stdout[-3000:]
    assert float(match.group(1)) >= 0.97, result.stdout[-2000:]

    checkpoints = sorted(tmp_path.glob("lightning_logs/version_*/checkpoints/*.ckpt"))
    assert checkpoints, "fit saved no checkpoint"
    task = OnlineClassifier.load_from_checkpoint(checkpoints[-1], map_location="cpu")
    binary = task.split.binary
    assert binary
    for weight in binary:
        assert set(weight.unique().tolist()) <= {-1.0, 1.0}

    tested = subprocess.run(CLI + ["test", "--ckpt_path", str(checkpoints[-1]), "--trainer.enable_progress_bar",
                                   "false"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert float(re.search(r"test/acc\s+│?\s*([0-9.]+)", tested.stdout).group(1)) >= 0.97
