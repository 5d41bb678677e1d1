"""On CUDA (skipped without one; ``benchmarks/gpu_check.py`` runs them with ``pytest -m cuda``): the default step is
the compiled one, it gives the eager CPU step's flips on odd-sized dense and packed tensors, does not synchronise
host and device, and trains the online classifier with its default options."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from bso_lightning.optim import BSO, TBSO

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SHAPES = [(16, 8, 3, 3), (5, 7), (33,)]  # packed: padded last bytes


def _gpu_check():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check_for_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_default_step_is_compiled_on_cuda():
    device = torch.device("cuda")
    for cls in (BSO, TBSO):
        opt = cls([torch.nn.Parameter(torch.ones(4, device=device))])
        assert opt.fused is None and opt.fused_on(device) is True
        assert opt.fused_on(torch.device("cpu")) is False


@pytest.mark.parametrize("case", [("TBSO", "packed", "bfloat16"), ("BSO", "dense", "float32")],
                         ids=lambda c: "-".join(c))
def test_compiled_cuda_step_matches_the_cpu_step_without_sync(case):
    result = _gpu_check().step_case(*case, path="compiled", device="cuda", shapes=SHAPES, steps=4)
    assert result["same"], result
    assert result["host_syncs_per_step"] == 0, result


def test_online_classifier_trains_on_cuda_with_its_defaults(tmp_path):
    import lightning as L

    from bso_lightning.callbacks import MemoryCallback
    from bso_lightning.nn.packed import binary_signs
    from bso_lightning.trainers import quiet_trainer
    from datamodules import DigitsDataModule
    from bso_lightning.tasks import OnlineClassifier

    L.seed_everything(0)
    task = OnlineClassifier(arch="small_cnn", arch_kwargs={"width": 8}, time_steps=2, bn_recalibration_batches=0)
    memory = MemoryCallback()
    trainer = quiet_trainer(accelerator="gpu", default_root_dir=tmp_path, max_epochs=1, limit_train_batches=3,
                            limit_val_batches=0, callbacks=[memory])
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=16))
    binary_opt = trainer.optimizers[0]
    assert binary_opt.fused_on(torch.device("cuda", 0)) is True
    assert int(binary_opt.flip_counts().sum()) >= 0 and binary_opt.state  # it stepped
    for p in task.split.binary:
        signs = binary_signs(p)
        assert signs.is_cuda and bool(((signs == 1) | (signs == -1)).all())
    assert memory.last_metrics["memory/cuda_peak_bytes"] >= memory.last_metrics["memory/peak_autograd_bytes"] > 0
