"""The one-line switches: configs/reference/{paper,authors}.yaml compose with the paper configs (docs/fidelity.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bso_lightning.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "configs" / "reference"
PAPER_CONFIGS = sorted(p for pattern in ("cifar*.yaml", "imagenet*.yaml", "gsc*.yaml")
                       for p in (REPO / "configs").glob(pattern))
AUTHORS = {"trace": "ndot_reference", "eps_placement": "outside", "reset_momentum_on_flip": True, "momentum": 0.0,
           "lr_schedule": "constant", "schedule_offset": 1, "batchnorm_statistics": "pooled"}
PAPER = {"trace": "ndot", "eps_placement": "inside", "reset_momentum_on_flip": False, "momentum": 0.9,
         "lr_schedule": "cosine", "schedule_offset": 0, "batchnorm_statistics": "pooled"}


def _parse(monkeypatch, tmp_path, *configs: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["bso-lightning"])
    args = [a for c in configs for a in ("--config", str(c))]
    return build_cli([*args, "--trainer.accelerator", "cpu", "--trainer.logger", "false"], run=False)


def test_fragments_hold_exactly_the_documented_switches():
    for name, expected in (("authors", AUTHORS), ("paper", PAPER)):
        raw = yaml.safe_load((REFERENCE / f"{name}.yaml").read_text())
        assert raw == {"model": {"init_args": expected}}, name
    fidelity = (REPO / "docs" / "fidelity.md").read_text()
    for key in AUTHORS:
        assert f"`{key}" in fidelity, f"docs/fidelity.md does not name {key}"


@pytest.mark.parametrize("config", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_state_what_they_follow_and_use_the_authors_trace(config):
    text = config.read_text()
    assert "Follows the paper" in text and "configs/reference/authors.yaml" in text
    args = yaml.safe_load(text)["model"]["init_args"]
    assert args["trace"] == "ndot_reference"
    keys = ("momentum", "lr_schedule", "schedule_offset", "batchnorm_statistics")  # (the paper's BatchNorm: pooled)
    assert {k: args[k] for k in keys} == {k: PAPER[k] for k in keys}
    assert args.get("eps_placement", "inside") == "inside"


@pytest.mark.parametrize("name", ["cifar10_tbso_t4", "cifar100_bso_t2"])
def test_authors_fragment_composes_after_a_paper_config(name, monkeypatch, tmp_path):
    config = REPO / "configs" / f"{name}.yaml"
    hp = _parse(monkeypatch, tmp_path, config, REFERENCE / "authors.yaml").model.hparams
    assert {k: hp[k] for k in AUTHORS} == AUTHORS
    raw = yaml.safe_load(config.read_text())["model"]["init_args"]
    assert (hp.threshold, hp.schedule_every, hp.time_steps) == (raw["threshold"], raw["schedule_every"], raw["time_steps"])
    back = _parse(monkeypatch, tmp_path, config, REFERENCE / "authors.yaml", REFERENCE / "paper.yaml").model.hparams
    assert {k: back[k] for k in PAPER} == PAPER


def test_authors_cifar10_dvs_split_composes(monkeypatch, tmp_path):
    cli = _parse(monkeypatch, tmp_path, REPO / "configs" / "cifar10_dvs_tbso_t10.yaml", REFERENCE / "authors.yaml",
                 REFERENCE / "authors_cifar10_dvs.yaml")
    assert cli.datamodule.split == "first_per_class" and cli.datamodule.train_per_class == 900
    assert cli.model.hparams.eps_placement == "outside"
