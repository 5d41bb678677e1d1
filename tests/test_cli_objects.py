"""Issue 22 item 2 on the command line: the classifier's options grouped by the object they belong to (optimizer,
schedule, fp_optimizer, lr_scheduler, loop), and a ``--print_config`` of the quick start that stays readable
(≤ 60 lines) and builds the same run when read back."""

from __future__ import annotations

import pytest

from bso_lightning.cli import build_cli, main

OBJECTS = ("optimizer", "schedule", "fp_optimizer", "lr_scheduler")


def _output(capsys, args: list[str]) -> str:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code in (0, None)
    return capsys.readouterr().out


def test_model_help_groups_the_options_by_object(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    out = _output(capsys, ["fit", "--model.help", "OnlineClassifier"])
    for name in OBJECTS:  # each object is one option, with its own --<object>.help
        assert f"--model.{name}.help" in out and f"--model.{name} {name.upper()}" in out, name
    lines = out.splitlines()
    loop = next(i for i, line in enumerate(lines) if line.startswith("how each training batch runs"))
    loop_options = [line.split()[0] for line in lines[loop:] if line.startswith("  --model.")]
    assert loop_options == [f"--model.loop.{k}" for k in ("update_mode", "step_in_backward", "saved_activation_dtype",
                                                           "mse_weight", "nonfinite", "max_skipped_fraction")]
    for flat in ("threshold", "betas", "schedule_final", "lr", "cosine_epochs", "mse_weight", "nonfinite"):
        assert f"--model.{flat} " not in out, f"{flat} is still an argument of the classifier itself"
    # the optimizer's own options: its hyper-parameters, under its name
    out = _output(capsys, ["fit", "--model.init_args.optimizer.help", "TBSO"])
    for key in ("threshold", "betas", "eps", "eps_placement", "fused", "momentum_dtype"):
        assert f"--optimizer.{key}" in out, key
    out = _output(capsys, ["fit", "--model.init_args.schedule.help", "StepSchedule"])
    assert all(f"--schedule.{key}" in out for key in ("every", "factor", "offset", "interval"))


def test_print_config_of_the_quick_start_is_short_and_reads_back_as_the_same_run(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["bso-lightning"])
    text = _output(capsys, ["fit", "--print_config"])
    assert len(text.splitlines()) <= 60, text
    for name in (*OBJECTS, "loop"):
        assert f"    {name}:" in text, name
    assert "accelerator:" not in text and "null" not in text  # Lightning's own defaults and unset entries left out
    config = tmp_path / "quickstart_printed.yaml"
    config.write_text(text)
    default = build_cli(["--trainer.logger", "false"], run=False)
    printed = build_cli(["--config", str(config), "--trainer.logger", "false"], run=False)
    assert dict(printed.model.hparams) == dict(default.model.hparams)
    assert type(printed.datamodule) is type(default.datamodule)
    assert vars(printed.datamodule.hparams) == vars(default.datamodule.hparams)
    for key in ("max_epochs", "log_every_n_steps"):
        assert getattr(printed.trainer, key) == getattr(default.trainer, key), key
    assert printed.config["seed_everything"] == default.config["seed_everything"] == 0
    # --print_config=FLAGS is jsonargparse's own (every trainer argument)
    assert "accelerator:" in _output(capsys, ["fit", "--print_config=skip_unset"])
