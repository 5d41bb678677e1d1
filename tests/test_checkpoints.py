"""bso_lightning.checkpoints: the one place that reads a user's checkpoint and builds or loads its model; the
exporters use it without the LightningModules (``bso_lightning.tasks`` is never imported by them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bso_lightning.checkpoints import (
    CheckpointError, build_model_from_checkpoint, load_model_weights, model_weights, task_hparams,
)
from bso_lightning.models import build_model
from bso_lightning.nn.routing import split_parameters

ROOT = Path(__file__).resolve().parents[1]
#: Modules that read checkpoints or model files for export: none may import the LightningModules.
EXPORT_MODULES = ("bso_lightning/checkpoints.py", "bso_lightning/export.py", "bso_lightning/export_nir.py",
                  *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "bso_lightning/interop").glob("*.py")))
HPARAMS = {"arch": "small_cnn", "arch_kwargs": {"width": 4}, "num_classes": 10, "in_channels": 1, "time_steps": 2}


def _imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement in ``path``, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


@pytest.mark.parametrize("module", EXPORT_MODULES)
def test_export_code_does_not_import_the_lightning_modules(module):
    imported = _imported_modules(ROOT / module)
    assert not {m for m in imported if m == "bso_lightning.tasks" or m.startswith("bso_lightning.tasks.")}, module


def test_importing_the_exporters_loads_no_lightning_module():
    code = ("import sys, bso_lightning.checkpoints, bso_lightning.export, bso_lightning.export_nir, "
            "bso_lightning.interop.nir, bso_lightning.interop.consumers; print(sorted(m for m in sys.modules if m.startswith('bso_lightning.tasks')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def _checkpoint(tmp_path: Path, model: torch.nn.Module, name: str = "task.ckpt", **hparams) -> Path:
    """What a task checkpoint holds for these functions: hyper-parameters and the ``model.`` weights."""
    path = tmp_path / name
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": {**HPARAMS, **hparams}, "state_dict": state}, path)
    return path


def _binary_names(model: torch.nn.Module) -> list[str]:
    binary = {id(p) for p in split_parameters(model).binary}
    return [name for name, p in model.named_parameters() if id(p) in binary]


def _scrambled(seed: int = 0) -> torch.nn.Module:
    """Random ±1 binary weights and random full-precision parameters, as after training."""
    model = build_model("small_cnn", width=4, num_classes=10, in_channels=1)
    gen = torch.Generator().manual_seed(seed)
    binary = set(_binary_names(model))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randint(0, 2, p.shape, generator=gen) * 2.0 - 1.0 if name in binary
                    else torch.randn(p.shape, generator=gen))
    return model


def test_build_model_from_checkpoint_rebuilds_the_network(tmp_path):
    model = _scrambled()
    model.eval()
    path = _checkpoint(tmp_path, model)
    rebuilt, hparams = build_model_from_checkpoint(path)
    assert hparams["arch"] == "small_cnn"
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key


def test_build_model_from_checkpoint_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "no_arch.ckpt"
    torch.save({"hyper_parameters": {"num_classes": 10}, "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path}: .*hyper_parameters\.arch"):
        build_model_from_checkpoint(path)
    huge = _checkpoint(tmp_path, _scrambled(), "huge.ckpt", arch_kwargs={"width": 200_000})
    with pytest.raises(CheckpointError, match=rf"checkpoint {huge}: hyper_parameters \(arch='small_cnn', arch_kwargs="
                                              r"\{'width': 200000\}.*describe a model of 3,600,"):
        build_model_from_checkpoint(huge)  # before anything is built
    other = _checkpoint(tmp_path, build_model("small_cnn", width=8, num_classes=10, in_channels=1), "other.ckpt")
    with pytest.raises(CheckpointError, match=rf"checkpoint {other}: its model weights do not fit small_cnn"):
        build_model_from_checkpoint(other)  # hyper-parameters say width 4, weights are width 8


def test_load_model_weights_is_what_pretrained_does(tmp_path):
    source = _scrambled(seed=1)
    latent = {k: v.clone() for k, v in source.state_dict().items()}
    binary = _binary_names(source)
    assert binary
    for key in binary:  # latent weights of a BPTT run: mapped to ±1 by their sign
        latent[key] = latent[key] * (torch.rand(latent[key].shape) * 0.5 + 0.1)
    source.load_state_dict(latent)
    path = _checkpoint(tmp_path, source)
    target = build_model("small_cnn", width=4, num_classes=10, in_channels=1)
    load_model_weights(target, path, HPARAMS)
    for key in binary:
        assert torch.equal(target.state_dict()[key], latent[key].sign()), key

    with pytest.raises(CheckpointError, match=rf"checkpoint {path}: was written by a different architecture "
                                              r"\(num_classes: checkpoint 10, model 5\)"):
        load_model_weights(target, path, {**HPARAMS, "num_classes": 5})
    broken = {k: v.clone() for k, v in source.state_dict().items()}
    first = next(k for k, v in broken.items() if v.is_floating_point())
    broken[first].view(-1)[0] = float("nan")
    source.load_state_dict(broken)
    nan = _checkpoint(tmp_path, source, "nan.ckpt")
    with pytest.raises(CheckpointError, match=rf"checkpoint {nan}: holds non-finite tensors: {first} \(1 NaN"):
        load_model_weights(target, nan, HPARAMS)


def test_model_weights_and_hparams_of_a_read_checkpoint():
    checkpoint = {"hyper_parameters": HPARAMS, "state_dict": {"model.0.weight": 1, "optimizer_thing": 2}}
    assert model_weights(checkpoint) == {"0.weight": 1}
    assert task_hparams(checkpoint)["arch"] == "small_cnn"
    with pytest.raises(CheckpointError, match="f.ckpt: is not a checkpoint of an OnlineClassifier"):
        task_hparams({"state_dict": {}}, "f.ckpt")
