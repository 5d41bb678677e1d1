"""The online classifier: a step per time step, ±1 weights, exact resume, clear errors."""

import lightning as L
import pytest
import torch

from bso_lightning.optim import BSO, TBSO, split_parameters
from bso_lightning.tasks.loss import online_loss
from tests.tasks.conftest import make_task, make_trainer


def _binary_state(task):
    return [p.detach().clone() for p in split_parameters(task.model).binary]


def test_loss_matches_eq_8():
    out = torch.tensor([[2.0, 0.5, -1.0]])
    y = torch.tensor([0])
    ce = torch.nn.functional.cross_entropy(out, y)
    mse = ((out - torch.tensor([[1.0, 0.0, 0.0]])) ** 2).mean()
    torch.testing.assert_close(online_loss(out, y, time_steps=4, mse_weight=0.05), (0.95 * ce + 0.05 * mse) / 4)


@pytest.mark.parametrize("update_mode, steps_per_batch", [("realtime", 2 * 3), ("accumulated", 2)])
def test_optimizer_steps_per_batch_and_weights_stay_binary(tmp_path, digits, update_mode, steps_per_batch):
    L.seed_everything(0)
    task = make_task(time_steps=3, update_mode=update_mode)
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
    L.seed_everything(0)
    task = make_task(optimizer="bso", trace="ndot", threshold=1e-6)
    trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=0)
    trainer.fit(task, datamodule=digits)
    assert isinstance(trainer.optimizers[0], BSO)


def test_resume_is_exact(tmp_path, digits):
    def fresh(seed=0):
        L.seed_everything(seed)
        return make_task(time_steps=2, schedule="step", schedule_every=1, schedule_factor=0.5)

    straight = fresh()
    trainer = make_trainer(tmp_path / "a", max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(straight, datamodule=digits)

    first_half = fresh()
    trainer = make_trainer(tmp_path / "b", max_epochs=1, limit_train_batches=3, limit_val_batches=1)
    trainer.fit(first_half, datamodule=digits)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed = fresh(seed=123)  # different init: everything must come from the checkpoint
    trainer_resumed = make_trainer(tmp_path / "c", max_epochs=2, limit_train_batches=3, limit_val_batches=1)
    trainer_resumed.fit(resumed, datamodule=digits, ckpt_path=ckpt)

    for a, b in zip(_binary_state(straight), _binary_state(resumed)):
        assert torch.equal(a, b)
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    opt_a = [o.state_dict() for o in straight.trainer.optimizers]
    opt_b = [o.state_dict() for o in trainer_resumed.optimizers]
    for sa, sb in zip(opt_a, opt_b):
        assert sa["state"].keys() == sb["state"].keys()
        for key in sa["state"]:
            for name, value in sa["state"][key].items():
                torch.testing.assert_close(value, sb["state"][key][name], rtol=0, atol=0)
        assert sa["param_groups"] == sb["param_groups"]  # includes the scheduled threshold, beta and lr


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


@pytest.mark.parametrize("kwargs, culprit", [
    ({"time_steps": 0}, "time_steps"),
    ({"optimizer": "adam"}, "optimizer"),
    ({"threshold": -1.0}, "threshold"),
    ({"beta": 1.0, "optimizer": "bso"}, "beta"),
    ({"betas": (0.9, 1.5)}, "beta"),
    ({"eps": 0.0}, "eps"),
    ({"mse_weight": 2.0}, "mse_weight"),
    ({"update_mode": "sometimes"}, "update_mode"),
    ({"schedule": "step", "schedule_every": 0}, "every"),
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
    finetune = make_task(time_steps=3, threshold=1e-11, betas=(0.99999999, 0.99999), pretrained=str(ckpt))
    for a, b in zip(pretrain.model.state_dict().values(), finetune.model.state_dict().values()):
        assert torch.equal(a, b)
    trainer = make_trainer(tmp_path / "ft", max_epochs=1, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(finetune, datamodule=digits)  # optimizer state and epochs start afresh
    assert trainer.global_step == 2 * 2 * 3

    with pytest.raises(Exception, match="pretrain.ckpt"):
        make_task(arch_kwargs={"width": 16}, pretrained=str(ckpt))  # another architecture, named with the file
