"""The bso-lightning command: help, defaults equal to configs/quickstart.yaml, and the quick start end to end."""

from pathlib import Path

import pytest
import yaml

from bso_lightning.callbacks import FlipRateCallback
from bso_lightning.cli import build_cli, expanded_size, main
from bso_lightning.nn.packed import PackedBinaryParameter
from bso_lightning.tasks import OnlineClassifier

REPO = Path(__file__).resolve().parents[1]


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
    assert defaults["model"]["init_args"]["optimizer"]["class_path"] == "bso_lightning.optim.TBSO"
    assert defaults["data"]["class_path"] == "datamodules.DigitsDataModule"


@pytest.mark.timeout(900)  # ~45 s of CPU (8 epochs of a width-16 net); generous for a loaded CI machine
def test_quickstart_end_to_end(tmp_path, monkeypatch):
    """README command 1, `bso-lightning fit` with no arguments (the settings of configs/quickstart.yaml, see the
    test above), run in this process: test accuracy >= 97% (README claims >= 98%, measured by
    benchmarks/quickstart_time.py; the test leaves a point for thread-count rounding differences), a checkpoint with
    ±1 weights, the end-of-training flip rate in the summary, and `bso-lightning test --ckpt_path` on that checkpoint
    scores the same accuracy."""
    monkeypatch.chdir(tmp_path)  # lightning_logs/ lands where the user runs the command
    fit = build_cli(["fit", "--trainer.enable_progress_bar", "false"])
    accuracy = float(fit.trainer.callback_metrics["test/acc"])
    assert accuracy >= 0.97, fit.trainer.callback_metrics
    flip_rate = [cb for cb in fit.trainer.callbacks if isinstance(cb, FlipRateCallback)]  # added by the CLI
    assert len(flip_rate) == 1 and 0.0 <= flip_rate[0].summary["flips/final"] < 1e-2  # below LateFlipWarning's

    checkpoints = sorted(tmp_path.glob("lightning_logs/version_*/checkpoints/*.ckpt"))
    assert checkpoints, "fit saved no checkpoint"
    task = OnlineClassifier.load_from_checkpoint(checkpoints[-1], map_location="cpu")
    binary = task.split.binary
    assert binary and all(isinstance(w, PackedBinaryParameter) for w in binary)  # the default: 1 bit per weight
    for weight in binary:
        assert set(weight.signs().unique().tolist()) == {-1.0, 1.0}

    tested = build_cli(["test", "--ckpt_path", str(checkpoints[-1]), "--trainer.enable_progress_bar", "false"])
    assert float(tested.trainer.callback_metrics["test/acc"]) == pytest.approx(accuracy, abs=1e-6)


def test_root_cause_reports_the_library_error_that_names_the_file_not_the_error_it_wraps():
    """(issue 19) jsonargparse wraps our error; ours wraps the low-level one: the one naming the file is reported."""
    from bso_lightning.cli import root_cause
    from datamodules.base import DataFileError

    try:
        try:
            try:
                raise ValueError("cannot reshape array of size 3000 into shape (3,32,32)")
            except ValueError as inner:
                raise DataFileError("/data/cifar/data_batch_1", "not a CIFAR python pickle") from inner
        except DataFileError as ours:
            raise ValueError("Problem with given class_path 'datamodules.CIFAR10DataModule'") from ours
    except ValueError as outer:
        cause = root_cause(outer)
    assert isinstance(cause, DataFileError) and "data_batch_1" in str(cause)
    plain = ValueError("outer")
    plain.__cause__ = OSError(28, "No space left on device")
    assert isinstance(root_cause(plain), OSError)


def _alias_bomb(levels: int) -> str:
    """A "billion laughs" YAML document: each anchor lists the previous one 10 times (10**levels strings)."""
    lines = ["a0: &a0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nmodel:\n  init_args:\n    arch_kwargs: *a{levels - 1}\n"


@pytest.mark.parametrize("document", [_alias_bomb(9), "model:\n  init_args:\n    arch_kwargs: &s {x: *s}\n"],
                         ids=["billion_laughs", "alias_inside_itself"])
def test_a_yaml_alias_bomb_is_refused_in_one_line_naming_the_file(tmp_path, monkeypatch, capsys, document):
    """It used to grow without bound, then end in a MemoryError (issue 19)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BSO_DEBUG", raising=False)
    (tmp_path / "bomb.yaml").write_text(document)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "bomb.yaml"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bso-lightning: error: config bomb.yaml: expands to more than 1,000,000 values (YAML aliases "
                   "repeated inside one another, or an alias inside itself); refused before it is expanded  "
                   "[ValueError; BSO_DEBUG=1 shows the traceback]"], err
    # counted without expanding: a_k holds 1 + 10 * size(a_{k-1}) values (11, 111, ..., 111111); model.init_args adds 2
    assert expanded_size(yaml.safe_load(_alias_bomb(5))) == 1 + (11 + 111 + 1111 + 11111 + 111111) + (111111 + 2)


def test_bso_lightning_imports_nothing_from_datamodules():
    """One-way packages (issue 22 item 5): datamodules may use bso_lightning, never the reverse. The CLI names its
    default DataModule by class path and recognises data errors by bso_lightning.errors.UserDataError."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "bso_lightning"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.relative_to(package.parent)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] == "datamodules"]
    assert offenders == []
    code = ("import sys, bso_lightning, bso_lightning.cli, bso_lightning.export; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'datamodules'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=package.parent).stdout.strip().splitlines()[-1]
    assert out == "[]"
    from bso_lightning.errors import UserDataError
    from datamodules import DataFileError

    assert issubclass(DataFileError, UserDataError)  # printed as one line by the CLI (USER_ERRORS)
