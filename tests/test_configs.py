"""Every experiment config parses with the CLI and runs ``fit`` (``fast_dev_run``) on CPU over the fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bso_lightning.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

# One config per row of the paper's Tables 2 and 5 that this library runs.
PAPER_ROWS = [
    *(f"{ds}_{opt}_t{t}" for ds in ("cifar10", "cifar100") for opt in ("bso", "tbso") for t in (2, 4, 6)),
    "imagenet_resnet18_tbso_pretrain_t1",
    "imagenet_resnet18_tbso_finetune_t4",
    "imagenet_resnet18_tbso_finetune_t6",
    "cifar10_dvs_bso_t10",
    "cifar10_dvs_tbso_t10",
    "gsc_tbso_t4",
]

FIXTURE_ROOT = {  # DataModule -> fixture folder its root points at
    "datamodules.CIFAR10DataModule": "cifar10",
    "datamodules.CIFAR100DataModule": "cifar100",
    "datamodules.ImageNetDataModule": "imagenet",
    "datamodules.CIFAR10DVSDataModule": "cifar10_dvs",
    "datamodules.SpeechCommandsDataModule": "speech_commands",
    "datamodules.DVS128GestureDataModule": "dvs128_gesture",
    "datamodules.SHDDataModule": "shd",
}
SMALL = {  # overrides that keep one step cheap on CPU (the fixtures are tiny)
    "datamodules.ImageNetDataModule": ["--data.init_args.num_classes", "3", "--data.init_args.image_size", "32",
                                       "--data.init_args.resize_size", "36"],
    "datamodules.CIFAR10DVSDataModule": ["--data.init_args.time_steps", "2", "--data.init_args.train_per_class", "4"],
    "datamodules.DVS128GestureDataModule": ["--data.init_args.time_steps", "2", "--data.init_args.image_size", "32"],
    "datamodules.SHDDataModule": ["--data.init_args.time_steps", "2", "--data.init_args.time_bins", "16",
                                  "--data.init_args.channel_groups", "16"],
}
EVENT_DATA = ("datamodules.CIFAR10DVSDataModule", "datamodules.DVS128GestureDataModule", "datamodules.SHDDataModule")

# BatchNorm re-estimation (before validation and test) runs over the training loader; one config per
# DataModule keeps it on (one batch), the rest skip it to save CPU time.
RECALIBRATE = {"quickstart", "cifar10_bso_t2", "cifar100_bso_t2", "imagenet_resnet18_tbso_pretrain_t1",
               "cifar10_dvs_bso_t10", "gsc_tbso_t4"}


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def data_roots(tmp_path_factory, fixtures_module) -> dict[str, Path]:
    return fixtures_module.make_all(tmp_path_factory.mktemp("datasets"))


def test_every_paper_row_has_a_config():
    names = {p.stem for p in CONFIGS}
    assert not set(PAPER_ROWS) - names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_parses_with_its_paper_values(config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["bso-lightning"])
    raw = _load(config)
    cli = build_cli(["--config", str(config), "--trainer.accelerator", "cpu"], run=False)
    model_args = raw["model"]["init_args"]
    assert cli.model.hparams.time_steps == model_args["time_steps"]
    hparams = cli.model.hparams
    for name in ("optimizer", "schedule", "fp_optimizer", "lr_scheduler"):  # class and arguments as the file says
        if name in model_args:
            assert hparams[name]["class_path"] == model_args[name]["class_path"], name
            for key, value in (model_args[name].get("init_args") or {}).items():
                assert hparams[name]["init_args"][key] == pytest.approx(value), f"{name}.init_args.{key}"
    for key, value in (model_args.get("loop") or {}).items():
        assert hparams.loop[key] == value, f"loop.{key}"
    # num_classes / in_channels come from the DataModule, not from the config
    assert "num_classes" not in model_args and "in_channels" not in model_args
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes
    assert cli.model.hparams.in_channels == cli.datamodule.in_channels
    frames = getattr(cli.datamodule, "time_steps", None)
    assert frames is None or frames == cli.model.hparams.time_steps, "event frames T must equal the model's T"
    assert cli.trainer.max_epochs == raw["trainer"]["max_epochs"]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_runs_fast_dev_run(config, data_roots, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["bso-lightning"])  # the CLI reads only `args`, not pytest's argv
    data_class = _load(config)["data"]["class_path"]
    time_steps = "2" if data_class in EVENT_DATA else "1"
    args = [
        "fit", "--config", str(config),
        "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--model.init_args.time_steps", time_steps,
        "--model.init_args.bn_recalibration_batches", "1" if config.stem in RECALIBRATE else "0",
        "--data.init_args.batch_size", "2", "--data.init_args.num_workers", "0",
    ]
    if data_class in FIXTURE_ROOT:
        args += ["--data.init_args.root", str(data_roots[FIXTURE_ROOT[data_class]]),
                 "--data.init_args.pin_memory", "false", *SMALL.get(data_class, [])]
    cli = build_cli(args)
    assert cli.trainer.state.finished and cli.trainer.global_step > 0
    assert "test/acc" in cli.trainer.callback_metrics  # test_after_fit ran
