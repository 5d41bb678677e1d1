"""The online classifier with packed weights, a bfloat16 momentum and bfloat16 saved activations: trains like the
dense classifier, resumes exactly mid-epoch, loads checkpoints of the other storage, exports straight from the
bits, runs in bf16 precision and under the telemetry callbacks."""

from functools import partial

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from bso_lightning.callbacks import FlipRateCallback, MemoryCallback, ModelSizeCallback
from bso_lightning.export import export_packed
from bso_lightning.nn.packed import PackedBinaryParameter
from bso_lightning.nn.routing import split_parameters
from bso_lightning.optim import TBSO, CosineAnnealingToZero
from bso_lightning.tasks.loop import OnlineLoop
from tests.reliability.helpers import (
    BATCHES, InterruptAt, assert_same, digits, make_task, make_trainer, snapshot,
)

COSINE_2 = partial(CosineAnnealingToZero, epochs=2)


def _signs(task):
    return [p.signs() if isinstance(p, PackedBinaryParameter) else p.detach().clone()
            for p in split_parameters(task.model).binary]


def _fit(tmp_path, **kwargs):
    task = make_task(**kwargs)
    trainer = make_trainer(tmp_path, max_epochs=1)
    trainer.fit(task, datamodule=digits())
    return task, trainer


def test_packed_classifier_trains_exactly_like_the_dense_one(tmp_path):
    dense, _ = _fit(tmp_path / "dense", weight_storage="dense", loop=OnlineLoop(step_in_backward=False))
    packed, trainer = _fit(tmp_path / "packed", weight_storage="packed", loop=OnlineLoop(step_in_backward=True))
    assert all(isinstance(p, PackedBinaryParameter) for p in split_parameters(packed.model).binary)
    assert trainer.optimizers[0].steps_in_backward is False  # switched off again after fit
    assert all(torch.equal(a, b) for a, b in zip(_signs(dense), _signs(packed)))
    assert any(not torch.equal(a, b) for a, b in zip(_signs(dense), _signs(make_task(weight_storage="dense"))))


def test_packed_export_is_byte_identical_to_the_dense_export(tmp_path):
    dense = make_task(weight_storage="dense")
    packed = make_task(weight_storage="packed")
    packed.load_state_dict(dense.state_dict())
    export_packed(dense, tmp_path / "dense.bso")
    export_packed(packed, tmp_path / "packed.bso")
    assert (tmp_path / "dense.bso").read_bytes() == (tmp_path / "packed.bso").read_bytes()


def test_mid_epoch_resume_is_exact_with_packed_weights_and_bfloat16_momentum(tmp_path):
    options = dict(weight_storage="packed", optimizer=partial(TBSO, momentum_dtype="bfloat16"),
                   loop=OnlineLoop(saved_activation_dtype="bfloat16"))
    reference = make_trainer(tmp_path / "reference")
    reference.fit(make_task(**options), datamodule=digits())
    periodic = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2 * 2 * (BATCHES + 2), save_top_k=-1,
                               filename="mid")
    stopped = make_trainer(tmp_path / "stopped", callbacks=[periodic, InterruptAt(2 * 2 * (BATCHES + 3), raise_now=True)],
                           enable_checkpointing=True)
    with pytest.raises(SystemExit):
        stopped.fit(make_task(**options), datamodule=digits())
    resumed = make_trainer(tmp_path / "resumed")
    resumed.fit(make_task(seed=7, **options), datamodule=digits(), ckpt_path=tmp_path / "ckpt" / "mid.ckpt")
    assert_same(snapshot(reference), snapshot(resumed), "resumed")


@pytest.mark.parametrize("saved", ["dense", "packed"])
def test_a_checkpoint_of_one_storage_resumes_into_either_storage_identically(tmp_path, saved):
    first = make_trainer(tmp_path / "first", max_epochs=1)
    first.fit(make_task(weight_storage=saved, lr_scheduler=COSINE_2), datamodule=digits())
    first.save_checkpoint(tmp_path / "saved.ckpt")
    resumed = {}
    for loaded in ("dense", "packed"):
        task = make_task(seed=5, weight_storage=loaded, lr_scheduler=COSINE_2)
        make_trainer(tmp_path / loaded, max_epochs=2).fit(task, datamodule=digits(), ckpt_path=tmp_path / "saved.ckpt")
        resumed[loaded] = task
    assert all(torch.equal(a, b) for a, b in zip(_signs(resumed["dense"]), _signs(resumed["packed"])))
    assert all(torch.equal(a, b) for a, b in zip(resumed["dense"].state_dict().values(),
                                                 resumed["packed"].model.state_dict().values())
               if a.dtype != torch.uint8 and a.is_floating_point() and a.dim() == 1)
    assert not all(torch.equal(a, b) for a, b in zip(_signs(resumed["dense"]), _signs(make_task(seed=5))))


def test_packed_bf16_true_precision_and_the_telemetry_callbacks(tmp_path):
    task = make_task(weight_storage="packed", optimizer=partial(TBSO, momentum_dtype="bfloat16"))
    flips, memory, size = FlipRateCallback(log_every_n_steps=2), MemoryCallback(), ModelSizeCallback()
    trainer = make_trainer(tmp_path, max_epochs=1, precision="bf16-true", callbacks=[flips, memory, size])
    before = _signs(task)
    trainer.fit(task, datamodule=digits())
    assert any(not torch.equal(a, b) for a, b in zip(before, _signs(task)))
    row = flips.history[-1]
    assert 0 < row["flips/overall"] < 1 and any(key.startswith("flips/model.") for key in row)
    assert all(not key.endswith("_bits") for key in row)
    assert memory.last_metrics["memory/state_bytes"] > 0
    dense = make_task(weight_storage="dense")
    assert size.metrics["model/binary_params"] == sum(p.numel() for p in split_parameters(dense.model).binary)
    with pytest.raises(ValueError, match="weight_storage must be one of"):
        make_task(weight_storage="bits")
    with pytest.raises(ValueError, match="saved_activation_dtype must be one of"):
        make_task(loop={"saved_activation_dtype": "float16"})
