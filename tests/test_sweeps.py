"""wandb: the logger fragment runs offline through the CLI; every sweep's parameter sets are accepted by the CLI.

No sweep server: parameter sets are enumerated (grid) or drawn here (random/bayes), and each run's command
line is rendered with wandb's own agent helpers, exactly as ``wandb agent`` would launch it.
"""

from __future__ import annotations

import itertools
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

from bso_lightning.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
RANDOM_DRAWS = 3
SMALL_RUN = ["--model.init_args.arch_kwargs={width: 8}", "--model.init_args.bn_recalibration_batches=1"]


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """No network, and no wandb files outside the test's directory."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    monkeypatch.chdir(tmp_path)


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


# --------------------------------------------------------------------------- drawing parameter sets


def _sample(name: str, spec: dict[str, Any], rng: random.Random) -> Any:
    if "value" in spec:
        return spec["value"]
    if "values" in spec:
        return rng.choices(spec["values"], weights=spec.get("probabilities"))[0]
    dist = spec.get("distribution")
    if dist == "uniform":
        return rng.uniform(spec["min"], spec["max"])
    if dist == "int_uniform":
        return rng.randint(spec["min"], spec["max"])
    if dist == "log_uniform_values":
        return math.exp(rng.uniform(math.log(spec["min"]), math.log(spec["max"])))
    if dist == "log_uniform":  # min/max are exponents of e
        return math.exp(rng.uniform(spec["min"], spec["max"]))
    raise AssertionError(f"parameter {name}: distribution {dist!r} is not drawn by this test; add it here")


def parameter_sets(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    params = sweep["parameters"]
    if sweep["method"] == "grid":
        for name, spec in params.items():
            assert "value" in spec or "values" in spec, f"grid parameter {name} needs value(s)"
        choices = [[spec["value"]] if "value" in spec else spec["values"] for spec in params.values()]
        return [dict(zip(params, combo)) for combo in itertools.product(*choices)]
    rng = random.Random(0)
    return [{name: _sample(name, spec, rng) for name, spec in params.items()} for _ in range(RANDOM_DRAWS)]


def render_command(sweep: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The argv ``wandb agent`` launches for one run (mirrors ``wandb_agent.Agent._command_run``)."""
    command = create_sweep_command(list(sweep["command"]))
    sweep_vars = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    sweep_vars.update(interpreter=["python"], program=[sweep["program"]], env=["/usr/bin/env"])
    argv: list[str] = []
    for chunk in map(str, command):
        if chunk.startswith("${") and chunk.endswith("}"):
            argv += sweep_vars.get(chunk[2:-1]) or []
        else:
            argv.append(chunk)
    return argv


def cli_args(argv: list[str]) -> list[str]:
    """The bso-lightning arguments of a rendered command, with config paths made absolute.

    The CIFAR-10 sweep's config may not exist yet in a checkout under construction: then its parameter
    sets are checked against the quick-start config (digits data) instead.
    """
    assert argv[:3] == ["/usr/bin/env", "bso-lightning", "fit"], argv
    args = []
    for arg in argv[3:]:
        if arg.startswith("configs/"):
            path = REPO / arg
            arg = str(path if path.exists() else REPO / "configs" / "quickstart.yaml")
        args.append(arg)
    return args


def _sweep_cases():
    for path in SWEEPS:
        sweep = _load(path)
        for i, params in enumerate(parameter_sets(sweep)):
            yield pytest.param(path, params, id=f"{path.stem}-{i}")


# --------------------------------------------------------------------------- tests


def test_sweeps_exist_for_the_quickstart_and_cifar10():
    names = {p.stem for p in SWEEPS}
    assert {"quickstart_tbso", "cifar10_tbso"} <= names
    for path in SWEEPS:
        sweep = _load(path)
        assert sweep["method"] in ("grid", "random", "bayes"), path
        assert sweep["metric"]["name"] == "val/acc", path
        assert "${args}" in sweep["command"], path
        tuned = {name.rsplit(".", 1)[-1] for name in sweep["parameters"]}
        assert "threshold" in tuned and "time_steps" in tuned and tuned & {"beta", "betas"}, path


def test_arguments_render_as_equals_flags():
    sweep = _load(REPO / "sweeps" / "quickstart_tbso.yaml")
    argv = render_command(sweep, {"model.init_args.optimizer.init_args.threshold": 1e-6,
                                  "model.init_args.optimizer.init_args.betas": [0.999, 0.99999],
                                  "model.init_args.time_steps": 4})
    assert argv[:5] == ["/usr/bin/env", "bso-lightning", "fit", "--config", "configs/quickstart.yaml"]
    assert argv[-3:] == ["--model.init_args.optimizer.init_args.threshold=1e-06",
                         "--model.init_args.optimizer.init_args.betas=[0.999, 0.99999]",
                         "--model.init_args.time_steps=4"]


@pytest.mark.parametrize(("path", "params"), list(_sweep_cases()))
def test_every_parameter_set_is_accepted_by_the_cli(path, params):
    cli = build_cli(args=cli_args(render_command(_load(path), params)), run=False)
    hparams = cli.model.hparams
    for name, value in params.items():
        got = hparams
        for key in name.removeprefix("model.init_args.").split("."):  # (optimizer.init_args.threshold: nested)
            got = got[key]
        if isinstance(got, dict) and isinstance(value, str):  # an object given by its class
            got = got["class_path"]
        assert (list(got) if isinstance(got, tuple) else got) == value, name
    assert any(type(cb).__name__ == "FlipRateCallback" for cb in cli.trainer.callbacks)


def test_one_quickstart_set_fits():
    sweep = _load(REPO / "sweeps" / "quickstart_tbso.yaml")
    params = parameter_sets(sweep)[0]
    args = cli_args(render_command(sweep, params))
    cli = build_cli(args=["fit", *args, *SMALL_RUN, "--trainer.fast_dev_run=true"])
    assert cli.trainer.state.finished
    assert "test/acc" in cli.trainer.callback_metrics  # test after fit ran too


def test_offline_wandb_run_writes_its_files(tmp_path):
    import wandb

    out = tmp_path / "runs"
    build_cli(args=[
        "fit", "--config", str(REPO / "configs" / "quickstart.yaml"),
        "--config", str(REPO / "configs" / "loggers" / "wandb.yaml"),
        f"--trainer.logger.init_args.save_dir={out}", "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
        "--trainer.enable_checkpointing=false", "--test_after_fit=false", *SMALL_RUN,
        "--trainer.callbacks+=bso_lightning.callbacks.FlipRateCallback",
    ])
    wandb.finish()
    wandb.teardown()  # what process exit does: shut the wandb service down, which flushes the run file
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list(out.rglob("*"))
    records = list(runs[0].glob("run-*.wandb"))
    assert len(records) == 1
    keys = (b"train/loss", b"flips/overall", b"flips/t3")
    deadline = time.monotonic() + 30  # the service writes asynchronously; give a loaded machine time
    while not all(key in records[0].read_bytes() for key in keys) and time.monotonic() < deadline:
        time.sleep(0.5)
    data = records[0].read_bytes()
    for key in keys:
        assert key in data, key
    assert (runs[0] / "files").is_dir()
    assert (out / "config.yaml").exists()  # LightningCLI saves the config beside the run
