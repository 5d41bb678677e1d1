"""Baselines: BPTT with latent weights and full-precision OTTT train on the same models and data as BSO."""

from __future__ import annotations

from functools import partial

import lightning as L
import pytest
import torch
from spikingjelly.activation_based import functional

from bso_lightning.cli import build_cli
from bso_lightning.models import build_model
from bso_lightning.models.variants import build_variant, convert_neurons
from bso_lightning.nn import BinaryConv2d, BinaryLayer, OnlineConv2d, OnlineLIFNode
from bso_lightning.nn.bptt import BPTTLIFNode
from bso_lightning.nn.latent import LatentBinaryConv2d, LatentBinaryLinear, clip_latent_, sign_ste
from bso_lightning.optim import BSO, CosineAnnealingToZero, split_parameters
from bso_lightning.tasks import BPTTLatentClassifier, OnlineClassifier, OTTTClassifier
from tests.tasks.conftest import make_trainer

# 4 re-estimation batches of 16: per-time-step BatchNorm statistics (the default) estimate one set per step from
# them; with 2 batches (32 samples per set) BPTT's test accuracy read 0.30 instead of 0.41 (0.38 pooled)
SMALL = dict(arch="small_cnn", arch_kwargs={"width": 8}, time_steps=2, lr_scheduler=partial(CosineAnnealingToZero, epochs=2),
             bn_recalibration_batches=4)


def _test_acc(task, tmp_path, digits) -> float:
    trainer = make_trainer(tmp_path, limit_test_batches=4)
    return trainer.test(task, datamodule=digits, verbose=False)[0]["test/acc"]


# ----------------------------------------------------------------------------- nn pieces


def test_sign_ste_is_plus_minus_one_with_clipped_identity_gradient():
    w = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0], requires_grad=True)
    b = sign_ste(w)
    assert b.tolist() == [-1, -1, -1, 1, 1, 1, 1]  # never 0
    (b * torch.arange(7.0)).sum().backward()
    assert w.grad.tolist() == [0, 1, 2, 3, 4, 5, 0]  # 1_{|w| <= 1}


def test_latent_conv_reuses_one_binarised_copy_and_gradients_match():
    torch.manual_seed(0)
    conv = LatentBinaryConv2d(3, 4, 3, padding=1)
    x = torch.rand(2, 3, 5, 5)
    first = conv.binary_weight()
    assert conv.binary_weight() is first  # cached while the latent weight is unchanged
    sum(conv(x * (t + 1)).square().sum() for t in range(3)).backward()
    cached_grad = conv.weight.grad.clone()
    conv.weight.grad = None
    reference = sum(torch.nn.functional.conv2d(x * (t + 1), sign_ste(conv.weight), padding=1).square().sum()
                    for t in range(3))
    reference.backward()
    torch.testing.assert_close(cached_grad, conv.weight.grad)
    with torch.no_grad():
        conv.weight.add_(0.5)
    assert conv.binary_weight() is not first  # a new version of the weight is binarised again
    clip_latent_([conv.weight])
    assert conv.weight.abs().max() <= 1.0


def test_bptt_neuron_backpropagates_through_time_and_online_does_not():
    x0 = torch.full((3, 4), 0.6, requires_grad=True)
    for node, expect_grad in ((BPTTLIFNode(), True), (OnlineLIFNode(trace="none"), False)):
        functional.reset_net(node)
        x0.grad = None
        node(x0)  # step 0: below threshold, charges the membrane
        out = node(torch.full((3, 4), 0.8, requires_grad=True))  # step 1: fires only because of step 0's charge
        assert out.sum() > 0
        out.sum().backward()
        has_grad = x0.grad is not None and bool(x0.grad.abs().sum() > 0)
        assert has_grad == expect_grad


def test_bptt_neuron_matches_spikingjelly_lif_through_time():
    from spikingjelly.activation_based import surrogate
    from spikingjelly.activation_based.neuron import LIFNode

    torch.manual_seed(0)
    reference = LIFNode(tau=2.0, decay_input=False, v_threshold=1.0, v_reset=None,
                        surrogate_function=surrogate.Sigmoid(alpha=4.0), detach_reset=True)
    grads = []
    for node in (BPTTLIFNode(), reference):
        xs = [(torch.randn(4, 6, generator=torch.Generator().manual_seed(t)) * 2).requires_grad_() for t in range(4)]
        functional.reset_net(node)
        outs = [node(x) for x in xs]
        sum(o.sum() * (t + 1) for t, o in enumerate(outs)).backward()
        grads.append(([o.detach() for o in outs], [x.grad for x in xs]))
    for a, b in zip(grads[0][0] + grads[0][1], grads[1][0] + grads[1][1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("arch, kwargs", [("small_cnn", {"width": 8}), ("vgg11", {}), ("resnet18", {"stem": "cifar"})])
def test_variants_swap_every_binary_layer_and_neuron(arch, kwargs):
    torch.manual_seed(0)
    binary = build_model(arch, **kwargs)
    latent = build_variant(arch, weights="latent", neuron="bptt", **kwargs)
    fp = build_variant(arch, weights="full_precision", **kwargs)
    shapes = [p.shape for p in binary.parameters()]
    assert [p.shape for p in latent.parameters()] == shapes == [p.shape for p in fp.parameters()]
    assert not any(isinstance(m, BinaryLayer) for m in latent.modules())
    assert not any(isinstance(m, BinaryLayer) for m in fp.modules())
    n_binary = sum(isinstance(m, BinaryConv2d) for m in binary.modules())
    assert sum(isinstance(m, (LatentBinaryConv2d, LatentBinaryLinear)) for m in latent.modules()) == n_binary
    neurons = sum(isinstance(m, OnlineLIFNode) for m in binary.modules())
    assert sum(isinstance(m, BPTTLIFNode) for m in latent.modules()) == neurons
    assert split_parameters(latent).binary == [] and split_parameters(fp).binary == []
    with pytest.raises(ValueError, match="weights must be one of"):
        build_variant(arch, weights="ternary", **kwargs)
    with pytest.raises(ValueError, match="neuron must be one of"):
        convert_neurons(binary, "slow")


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("cls", [OTTTClassifier, BPTTLatentClassifier])
def test_baseline_trains_and_improves(tmp_path, digits, cls):
    L.seed_everything(0)
    task = cls(**SMALL, **({"latent_optimizer": partial(torch.optim.Adam, lr=1e-2)} if cls is BPTTLatentClassifier else {}))
    before = _test_acc(task, tmp_path, digits)
    trainer = make_trainer(tmp_path, max_epochs=2, limit_train_batches=30, limit_val_batches=0)
    trainer.fit(task, datamodule=digits)
    after = _test_acc(task, tmp_path, digits)
    assert after > before + 0.2, f"{cls.__name__}: test accuracy {before:.2f} -> {after:.2f}"
    steps_per_batch = 2 if cls is BPTTLatentClassifier else SMALL["time_steps"]  # see module docstring
    assert trainer.global_step == 2 * 30 * steps_per_batch


def test_bptt_keeps_real_valued_latent_weights_and_bso_does_not(tmp_path, digits):
    L.seed_everything(0)
    bso = OnlineClassifier(optimizer=BSO, weight_storage="dense", **SMALL)  # (packed: tests/nn/test_packed.py)
    bptt = BPTTLatentClassifier(**SMALL)
    ottt = OTTTClassifier(**SMALL)
    for task in (bso, bptt, ottt):
        make_trainer(tmp_path, max_epochs=1, limit_train_batches=3, limit_val_batches=0).fit(task, datamodule=digits)
    reference_keys = set(build_model("small_cnn", width=8, batchnorm_time_steps=SMALL["time_steps"]).state_dict())
    binary_names = {f"{n}.weight" for n, m in bso.model.named_modules() if isinstance(m, BinaryLayer)}
    assert binary_names

    bso_state = bso.model.state_dict()
    assert set(bso_state) == reference_keys  # no latent or shadow weight tensors
    for name in binary_names:
        assert set(bso_state[name].unique().tolist()) <= {-1.0, 1.0}

    bptt_state = bptt.model.state_dict()
    assert set(bptt_state) == reference_keys  # the latent weight takes the binary weight's place
    for name in binary_names:
        latent = bptt_state[name]
        assert not set(latent.unique().tolist()) <= {-1.0, 1.0}, f"{name} is not real-valued"
        assert latent.abs().max() <= 1.0  # clipped after every step
    layer = dict(bptt.model.named_modules())[next(iter(binary_names)).rsplit(".", 1)[0]]
    assert set(layer.binary_weight().unique().tolist()) <= {-1.0, 1.0}  # what the forward pass uses
    latent_opt = bptt.trainer.optimizers[0]
    assert isinstance(latent_opt, torch.optim.Adam) and len(latent_opt.state) == len(binary_names)

    ottt_state = ottt.model.state_dict()
    assert all(isinstance(m, OnlineConv2d) and not isinstance(m, BinaryLayer)
               for n, m in ottt.model.named_modules() if f"{n}.weight" in binary_names)
    for name in binary_names:
        assert not set(ottt_state[name].unique().tolist()) <= {-1.0, 1.0}


def test_checkpoint_reloads_with_the_baseline_signature(tmp_path, digits):
    for cls in (OTTTClassifier, BPTTLatentClassifier):
        L.seed_everything(0)
        task = cls(**SMALL)
        assert task.hparams.fp_optimizer["class_path"] == "bso_lightning.optim.FullPrecisionSGD"
        assert not {"optimizer", "threshold", "schedule"} & set(task.hparams)  # (no BSO/T-BSO settings)
        trainer = make_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=0)
        trainer.fit(task, datamodule=digits)
        path = tmp_path / f"{cls.__name__}.ckpt"
        trainer.save_checkpoint(path)
        loaded = cls.load_from_checkpoint(path)
        for a, b in zip(task.model.state_dict().values(), loaded.model.state_dict().values()):
            assert torch.equal(a, b)


def test_invalid_arguments_name_the_argument():
    with pytest.raises(ValueError, match="latent_optimizer"):
        BPTTLatentClassifier(latent_optimizer="rmsprop")
    with pytest.raises(ValueError, match="time_steps"):
        OTTTClassifier(time_steps=0)
    with pytest.raises(ValueError, match="update_mode"):
        OTTTClassifier(update_mode="sometimes")


@pytest.mark.parametrize("cls", ["OTTTClassifier", "BPTTLatentClassifier"])
def test_cli_selects_the_baseline_by_class_path(tmp_path, cls):
    """`bso-lightning fit --model bso_lightning.tasks.<cls>` on the default digits data (one batch)."""
    cli = build_cli(["fit", "--model", f"bso_lightning.tasks.{cls}", "--model.init_args.time_steps", "2",
                     "--model.init_args.arch_kwargs", '{"width": 4}', "--model.init_args.bn_recalibration_batches",
                     "1", "--data.init_args.image_size", "8", "--trainer.fast_dev_run", "1",
                     "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                     "--trainer.default_root_dir", str(tmp_path)])
    assert type(cli.model).__name__ == cls
    assert cli.model.hparams.time_steps == 2
    assert cli.model.hparams.num_classes == 10 and cli.model.hparams.in_channels == 1  # linked from the data
    assert cli.trainer.global_step > 0
    assert "test/acc" in cli.trainer.callback_metrics  # test_after_fit ran
