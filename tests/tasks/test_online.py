"""The online classifier: a step per time step, ±1 weights, clear errors (exact resume: tests/reliability/test_resume.py)."""

from functools import partial

import lightning as L
import pytest
import torch

from bso_lightning.nn.packed import binary_signs

from bso_lightning.nn import OnlineLIFNode
from bso_lightning.optim import BSO, TBSO, StepSchedule, split_parameters
from bso_lightning.tasks.loop import OnlineLoop
from bso_lightning.tasks.loss import online_loss
from datamodules.sampling import EpochSeededSampler
from tests.tasks.conftest import make_task, make_trainer


def _binary_state(task):
    return [binary_signs(p) for p in split_parameters(task.model).binary]  # ±1 values, packed or dense


def test_loss_matches_eq_8():
    out = torch.tensor([[2.0, 0.5, -1.0]])
    y = torch.tensor([0])
    ce = torch.nn.functional.cross_entropy(out, y)
    mse = ((out - torch.tensor([[1.0, 0.0, 0.0]])) ** 2).mean()
    torch.testing.assert_close(online_loss(out, y, time_steps=4, mse_weight=0.05), (0.95 * ce + 0.05 * mse) / 4)


@pytest.mark.parametrize("update_mode, steps_per_batch", [("realtime", 2 * 3), ("accumulated", 2)])
def test_optimizer_steps_per_batch_and_weights_stay_binary(tmp_path, digits, update_mode, steps_per_batch):
    L.seed_everything(0)
    task = make_task(time_steps=3, loop=OnlineLoop(update_mode=update_mode))
    before = _binary_state(task)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=0)
    trainer.fit(task, datamodule=digits)
    # global_step counts every optimizer.step(): two optimizers, T steps each per batch in realtime mode
    assert trainer.global_step == 4 * steps_per_batch
    after = _binary_state(task)
    for w in after:
        assert set(w.unique().tolist()) <= {-1.0, 1.0}
    assert any(not torch.equal(a, b) for a, b in zip(before, after)), "no binary weight flipped"


def test_tbso_second_moment_has_one_scalar_per_time_step(tmp_path, digits):
    L.seed_everything(0)
    task = make_task(time_steps=3)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(task, datamodule=digits)
    binary_opt = trainer.optimizers[0]
    assert isinstance(binary_opt, TBSO)
    for p in binary_opt.binary_parameters():
        v = binary_opt.state[p]["v"]
        assert v.shape == (3,) and bool((v > 0).all())


def test_bso_variant_and_ndot_trace_train(tmp_path, digits):
    """optimizer=BSO trains the binary weights with BSO (they flip and stay ±1); trace="ndot" reaches every neuron
    and changes the weight gradient: BSO's state differs from the same run with the OTTT trace."""
    state = {}
    for trace in ("ndot", "ottt"):
        L.seed_everything(0)
        task = make_task(optimizer=partial(BSO, threshold=1e-6), trace=trace)
        before = _binary_state(task)
        trainer = make_trainer(tmp_path / trace, max_epochs=1, limit_train_batches=3, limit_val_batches=0)
        trainer.fit(task, datamodule=digits)
        binary_opt = trainer.optimizers[0]
        assert isinstance(binary_opt, BSO) and not isinstance(binary_opt, TBSO)
        assert {m.trace_mode for m in task.model.modules() if isinstance(m, OnlineLIFNode)} == {trace}
        after = _binary_state(task)
        assert all(set(w.unique().tolist()) <= {-1.0, 1.0} for w in after)
        assert any(not torch.equal(a, b) for a, b in zip(before, after)), f"BSO flipped no weight ({trace})"
        state[trace] = [v.clone() for p in binary_opt.binary_parameters() for v in binary_opt.state[p].values()
                        if isinstance(v, torch.Tensor) and v.is_floating_point()]
    assert state["ndot"] and len(state["ndot"]) == len(state["ottt"])
    assert any(not torch.equal(a, b) for a, b in zip(state["ndot"], state["ottt"])), "trace='ndot' changed nothing"


def test_bn_recalibration_sets_running_stats_from_current_weights(digits):
    L.seed_everything(0)
    task = make_task(bn_recalibration_batches=3)
    digits.setup("fit")
    bn = task.model[1]
    bn.running_mean.fill_(123.0)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.validate(task, datamodule=digits, verbose=False)
    assert bn.running_mean.abs().max() < 50  # re-estimated, the stale value is gone
    assert task.recalibrate_batchnorm() == 3


def test_bn_recalibration_has_its_own_rng_and_leaves_out_non_finite_batches(digits):
    """Same statistics whatever the global RNG state, which it leaves as it was; a NaN batch is not used."""
    L.seed_everything(0)
    task = make_task(bn_recalibration_batches=3)
    trainer = make_trainer(None, limit_val_batches=1)
    trainer.validate(task, datamodule=digits, verbose=False)  # attaches the trainer and DataModule
    bn = task.model[1]
    torch.manual_seed(1)
    assert task.recalibrate_batchnorm() == 3
    stats = (bn.running_mean.clone(), bn.running_var.clone())
    torch.manual_seed(2)
    state = torch.get_rng_state()
    assert task.recalibrate_batchnorm() == 3
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])

    images = digits.train_set.tensors[0]
    second_batch = list(EpochSeededSampler(digits.train_set, digits.seed))[16]  # the order of epoch 0
    saved = images[second_batch, 0, 0, 0].item()
    images[second_batch, 0, 0, 0] = float("nan")
    try:
        assert task.recalibrate_batchnorm() == 2
        assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()
    finally:
        images[second_batch, 0, 0, 0] = saved


@pytest.mark.parametrize("kwargs, culprit", [
    ({"time_steps": 0}, "time_steps"),
    ({"optimizer": torch.optim.Adam}, "optimizer"),
    ({"optimizer": partial(TBSO, threshold=-1.0)}, "threshold"),
    ({"optimizer": partial(BSO, beta=1.0)}, "beta"),
    ({"optimizer": partial(TBSO, betas=(0.9, 1.5))}, "beta"),
    ({"optimizer": partial(TBSO, eps=0.0)}, "eps"),
    ({"loop": {"mse_weight": 2.0}}, "mse_weight"),
    ({"loop": {"update_mode": "sometimes"}}, "update_mode"),
    ({"schedule": partial(StepSchedule, every=0)}, "every"),
])
def test_invalid_hyper_parameters_are_rejected_at_construction(kwargs, culprit):
    with pytest.raises(ValueError, match=culprit):
        make_task(**kwargs)


def test_sequence_batch_with_wrong_number_of_frames_is_rejected():
    task = make_task(time_steps=3)
    with pytest.raises(ValueError, match="time_steps=3"):
        task(torch.rand(2, 5, 1, 16, 16))


def test_sequence_batch_presents_one_frame_per_step_and_static_input_every_step():
    task = make_task(time_steps=3)
    seen = []
    task.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    frames = torch.rand(2, 3, 1, 16, 16)
    task(frames)
    assert len(seen) == 3 and all(torch.equal(seen[t], frames[:, t]) for t in range(3))
    seen.clear()
    image = torch.rand(2, 1, 16, 16)
    task(image)
    assert len(seen) == 3 and all(torch.equal(x, image) for x in seen)


def test_pretrained_weights_initialise_a_fine_tune_with_another_T(tmp_path, digits):
    L.seed_everything(0)
    pretrain = make_task(time_steps=1)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(pretrain, datamodule=digits)
    ckpt = tmp_path / "pretrain.ckpt"
    trainer.save_checkpoint(ckpt)

    L.seed_everything(1)
    finetune = make_task(time_steps=3, optimizer=partial(TBSO, threshold=1e-11, betas=(0.99999999, 0.99999)),
                         pretrained=str(ckpt))
    tuned = finetune.model.state_dict()
    for key, a in pretrain.model.state_dict().items():
        if key.endswith(("running_mean_t", "running_var_t", "num_batches_tracked_t")):  # per-step BN: T=1 -> 3 slots
            a = a[[0, 0, 0]]
        assert torch.equal(a, tuned[key]), key
    trainer = make_trainer(tmp_path / "ft", max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(finetune, datamodule=digits)  # optimizer state and epochs start afresh
    assert trainer.global_step == 2 * 2 * 3

    with pytest.raises(Exception, match="pretrain.ckpt"):
        make_task(arch_kwargs={"width": 16}, pretrained=str(ckpt))  # another architecture, named with the file
