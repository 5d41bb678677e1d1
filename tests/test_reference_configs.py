"""The one-line switches: configs/reference/{paper,authors}_{tbso,bso}.yaml compose with the paper configs
(docs/fidelity.md). One fragment per optimizer: T-BSO's ε placement and BSO's momentum reset are arguments of
their optimizer (``optimizer.init_args``), which only that optimizer has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bso_lightning.cli import build_cli

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "configs" / "reference"
PAPER_CONFIGS = sorted(p for pattern in ("cifar*.yaml", "imagenet*.yaml", "gsc*.yaml")
                       for p in (REPO / "configs").glob(pattern))
# What each fragment sets, by the path of the model argument (the same settings as before issue 22's spelling).
AUTHORS = {"trace": "ndot_reference", "fp_optimizer.init_args.momentum": 0.0,
           "lr_scheduler.class_path": "torch.optim.lr_scheduler.ConstantLR", "lr_scheduler.init_args.factor": 1.0,
           "lr_scheduler.init_args.total_iters": 0, "schedule.init_args.offset": 1, "batchnorm_statistics": "pooled"}
PAPER = {"trace": "ndot", "fp_optimizer.init_args.momentum": 0.9,
         "lr_scheduler.class_path": "bso_lightning.optim.CosineAnnealingToZero", "schedule.init_args.offset": 0,
         "batchnorm_statistics": "pooled"}
AUTHORS_OPTIMIZER = {"tbso": {"optimizer.init_args.eps_placement": "outside"},
                     "bso": {"optimizer.init_args.reset_momentum_on_flip": True}}
PAPER_OPTIMIZER = {"tbso": {"optimizer.init_args.eps_placement": "inside"},
                   "bso": {"optimizer.init_args.reset_momentum_on_flip": False}}
OPTIMIZER_CLASS = {"tbso": "bso_lightning.optim.TBSO", "bso": "bso_lightning.optim.BSO"}


def at(tree: Any, path: str) -> Any:
    """``tree["a"]["b"]`` for ``path`` ``"a.b"``."""
    for part in path.split("."):
        tree = tree[part]
    return tree


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` as ``{"a": {"b": 1}}``."""
    out: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, last = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def kind_of(config: Path) -> str:
    return "tbso" if "_tbso_" in config.stem else "bso"


def _parse(monkeypatch, tmp_path, *configs: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["bso-lightning"])
    args = [a for c in configs for a in ("--config", str(c))]
    return build_cli([*args, "--trainer.accelerator", "cpu", "--trainer.logger", "false"], run=False)


@pytest.mark.parametrize("kind", ["tbso", "bso"])
def test_fragments_hold_exactly_the_documented_switches(kind):
    for name, expected in (("authors", {**AUTHORS, **AUTHORS_OPTIMIZER[kind]}),
                           ("paper", {**PAPER, **PAPER_OPTIMIZER[kind]})):
        raw = yaml.safe_load((REFERENCE / f"{name}_{kind}.yaml").read_text())
        assert raw == {"model": {"init_args": nested(expected)}}, name
    fidelity = (REPO / "docs" / "fidelity.md").read_text()
    for path in {**AUTHORS, **AUTHORS_OPTIMIZER[kind]}:
        key = path.split(".")[0] if path.startswith("lr_scheduler") else path.split(".")[-1]
        assert f"`{key}" in fidelity, f"docs/fidelity.md does not name {key}"
        assert f"authors_{kind}.yaml" in fidelity


@pytest.mark.parametrize("config", PAPER_CONFIGS, ids=lambda p: p.stem)
def test_paper_configs_state_what_they_follow_and_use_the_authors_trace(config):
    text = config.read_text()
    kind = kind_of(config)
    assert "Follows the paper" in text and f"configs/reference/authors_{kind}.yaml" in text
    args = yaml.safe_load(text)["model"]["init_args"]
    assert args["optimizer"]["class_path"] == OPTIMIZER_CLASS[kind]
    assert args["trace"] == "ndot_reference"
    keys = ("fp_optimizer.init_args.momentum", "lr_scheduler.class_path", "schedule.init_args.offset",
            "batchnorm_statistics")  # (the paper's BatchNorm: pooled)
    assert {k: at(args, k) for k in keys} == {k: PAPER[k] for k in keys}
    assert args["optimizer"]["init_args"].get("eps_placement", "inside") == "inside"
    assert args["optimizer"]["init_args"].get("reset_momentum_on_flip", False) is False


@pytest.mark.parametrize("name", ["cifar10_tbso_t4", "cifar100_bso_t2"])
def test_authors_fragment_composes_after_a_paper_config(name, monkeypatch, tmp_path):
    config = REPO / "configs" / f"{name}.yaml"
    kind = kind_of(config)
    authors = {**AUTHORS, **AUTHORS_OPTIMIZER[kind]}
    hp = _parse(monkeypatch, tmp_path, config, REFERENCE / f"authors_{kind}.yaml").model.hparams
    assert {k: at(hp, k) for k in authors} == authors
    raw = yaml.safe_load(config.read_text())["model"]["init_args"]
    keys = ("optimizer.init_args.threshold", "schedule.init_args.every", "time_steps")
    assert {k: at(hp, k) for k in keys} == {k: at(raw, k) for k in keys}
    back = _parse(monkeypatch, tmp_path, config, REFERENCE / f"authors_{kind}.yaml",
                  REFERENCE / f"paper_{kind}.yaml").model.hparams
    paper = {**PAPER, **PAPER_OPTIMIZER[kind]}
    assert {k: at(back, k) for k in paper} == paper


def test_a_fragment_of_the_other_optimizer_is_refused(monkeypatch, tmp_path):
    """authors_tbso.yaml on a BSO config names the argument BSO does not have (nothing is silently dropped)."""
    with pytest.raises((SystemExit, ValueError)):
        _parse(monkeypatch, tmp_path, REPO / "configs" / "cifar10_bso_t4.yaml", REFERENCE / "authors_tbso.yaml")


def test_authors_cifar10_dvs_split_composes(monkeypatch, tmp_path):
    cli = _parse(monkeypatch, tmp_path, REPO / "configs" / "cifar10_dvs_tbso_t10.yaml", REFERENCE / "authors_tbso.yaml",
                 REFERENCE / "authors_cifar10_dvs.yaml")
    assert cli.datamodule.split == "first_per_class" and cli.datamodule.train_per_class == 900
    assert cli.model.hparams.optimizer["init_args"]["eps_placement"] == "outside"
