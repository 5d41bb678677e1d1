"""``fused=True``: the torch.compile'd BSO/T-BSO step gives the eager step's results.

The hand-computed sequences of test_bso.py / test_tbso.py also run with ``fused=True``; here: random
multi-tensor runs against the eager step (NaN gradients, bf16 weights, momentum reset, growing v),
schedules that change γ/β without recompiling, checkpoints shared by both paths, and the
LightningModule switch.
"""

import pytest
import torch

from bso_lightning.optim import BSO, TBSO

SHAPES = [(6, 3, 3, 3), (12, 6, 3, 3), (10, 12)]


def _params(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randint(0, 2, s, generator=gen) * 2 - 1).to(dtype)) for s in SHAPES]


def _grads(gen, step):
    grads = [torch.randn(s, generator=gen) * 0.01 for s in SHAPES]
    if step == 3:
        grads[1].view(-1)[5] = float("nan")
    if step == 6:
        grads[0].view(-1)[0] = float("inf")
    return grads


def _assert_same_run(eager, fused, p_eager, p_fused, rtol=1e-5):
    for a, b in zip(p_eager, p_fused):
        assert torch.equal(a, b)  # every flip decision agrees
        ma, mb = eager.state[a]["momentum"], fused.state[b]["momentum"]
        # same Eq. 11 / 13 up to float32 rounding (the compiled lerp may round differently in the last bit)
        assert (ma - mb).abs().max() <= rtol * ma.abs().max()
        assert torch.isfinite(mb).all()
    assert torch.equal(eager.flip_counts(), fused.flip_counts())
    assert torch.equal(eager.nonfinite_counts(), fused.nonfinite_counts())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kwargs", [dict(threshold=1e-3, beta=0.9),
                                    dict(threshold=1e-3, beta=0.3, reset_momentum_on_flip=True)],
                         ids=["bso", "bso-reset"])
def test_bso_fused_matches_eager(kwargs, dtype):
    p_eager, p_fused = _params(dtype), _params(dtype)
    eager, fused = BSO(p_eager, **kwargs), BSO(p_fused, fused=True, **kwargs)
    gen = torch.Generator().manual_seed(1)
    for step in range(10):
        for pe, pf, g in zip(p_eager, p_fused, _grads(gen, step)):
            pe.grad, pf.grad = g.to(dtype), g.to(dtype)
        eager.step()
        fused.step()
        _assert_same_run(eager, fused, p_eager, p_fused)
    assert eager.flip_counts().sum() > 0 and eager.nonfinite_counts().tolist() == [1, 1, 0]


def test_tbso_fused_matches_eager_over_time_steps():
    p_eager, p_fused = _params(), _params()
    eager = TBSO(p_eager, threshold=0.5, betas=(0.9, 0.99))
    fused = TBSO(p_fused, threshold=0.5, betas=(0.9, 0.99), fused=True)
    gen = torch.Generator().manual_seed(2)
    total_flips = 0
    for step in range(12):
        t = step % 3 if step < 9 else 3 + step % 2  # v grows in the first batch and again later
        for pe, pf, g in zip(p_eager, p_fused, _grads(gen, step)):
            pe.grad, pf.grad = g, g.clone()
        eager.step(time_step=t)
        fused.step(time_step=t)
        _assert_same_run(eager, fused, p_eager, p_fused)
        total_flips += int(eager.flip_counts().sum())
        for a, b in zip(p_eager, p_fused):
            torch.testing.assert_close(fused.state[b]["v"], eager.state[a]["v"], rtol=1e-5, atol=0)
    assert total_flips > 0  # the comparison covered steps that flip weights
    assert eager.nonfinite_counts().tolist() == [1, 1, 0] and fused.state[p_fused[0]]["v"].numel() == 5


def test_schedule_changes_do_not_recompile():
    import torch._dynamo

    params = _params()
    opt = TBSO(params, threshold=0.5, betas=(0.9, 0.99), fused=True)
    for p in params:
        p.grad = torch.randn_like(p) * 0.01
    opt.step(time_step=0)
    opt.step(time_step=1)  # v grows: may compile once more, with dynamic sizes
    with torch._dynamo.config.patch(error_on_recompile=True):
        for t in range(2):
            for group in opt.param_groups:  # what BinaryHyperparameterScheduler does every epoch / step
                group["threshold"] *= 0.1
                group["betas"] = (1 - (1 - group["betas"][0]) * 0.1, group["betas"][1])
            opt.step(time_step=t)


def test_checkpoints_are_shared_by_both_paths():
    p_fused, p_eager = _params(seed=4), _params(seed=4)
    fused = BSO(p_fused, threshold=1e-3, beta=0.8, fused=True)
    gen = torch.Generator().manual_seed(5)
    for step in range(3):
        for p, g in zip(p_fused, _grads(gen, step)):
            p.grad = g
        fused.step()
    eager = BSO(p_eager, fused=False)
    for a, b in zip(p_eager, p_fused):
        a.data.copy_(b)
    eager.load_state_dict(fused.state_dict())
    assert eager.fused is False and fused.fused is True  # an instance setting, not part of the state
    for step in range(3, 6):
        for pe, pf, g in zip(p_eager, p_fused, _grads(gen, step)):
            pe.grad, pf.grad = g, g.clone()
        eager.step()
        fused.step()
        _assert_same_run(eager, fused, p_eager, p_fused)


@pytest.mark.parametrize("momentum_dtype", ["float32", "int8"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_fused_updates_trace_to_one_graph_without_breaks(packed, momentum_dtype):
    import torch._dynamo

    from bso_lightning.nn.packed import PackedBinaryParameter
    from bso_lightning.optim import functional

    params = _params()
    grads = [torch.randn_like(p) for p in params]
    if momentum_dtype == "int8":  # codes, block scales and full-size rounding noise
        momenta = [torch.zeros(p.shape, dtype=torch.int8) for p in params]
        scales = [torch.zeros(functional.int8_scale_size(p.numel())) for p in params]
        noises = [torch.randint(0, 1 << 16, (p.numel(),), dtype=torch.int32) for p in params]
    else:
        momenta, scales, noises = [torch.zeros_like(p) for p in params], [None] * len(params), [None] * len(params)
    if packed:
        packed_params = [PackedBinaryParameter.from_signs(p) for p in params]
        data, shapes = [p.data for p in packed_params], [p.logical_shape for p in packed_params]
    else:
        data, shapes = params, [None] * len(params)
    counters = [[torch.zeros((), dtype=torch.int64) for _ in params] for _ in range(2)]
    scalar = torch.tensor(0.1)
    with torch.no_grad():
        bso = torch._dynamo.explain(functional._bso_tensors)(data, shapes, grads, momenta, scales, *counters,
                                                             noises, scalar, scalar, True)
        vs = [torch.zeros(3) for _ in params]
        tbso = torch._dynamo.explain(functional._tbso_tensors)(data, shapes, grads, momenta, scales, vs,
                                                               torch.tensor([1]), *counters, noises, scalar, scalar,
                                                               scalar, scalar, scalar, False)
    for explanation in (bso, tbso):
        assert explanation.graph_count == 1 and explanation.graph_break_count == 0, explanation.break_reasons


def test_online_classifier_switch_trains_with_the_fused_step():
    from functools import partial

    import lightning as L

    from bso_lightning.nn.packed import binary_signs
    from bso_lightning.tasks import OnlineClassifier
    from datamodules import DigitsDataModule

    L.seed_everything(0)
    task = OnlineClassifier(arch="small_cnn", arch_kwargs={"width": 4}, time_steps=2,
                            optimizer=partial(TBSO, fused=True, threshold=1e-6), bn_recalibration_batches=0)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    before = [binary_signs(p) for p in task.split.binary]
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=16, image_size=8))
    binary_opt = trainer.optimizers[0]
    assert binary_opt.fused is True
    assert trainer.global_step == 4 * 2 * 2  # one BSO and one SGD step per time step
    after = [binary_signs(p) for p in task.split.binary]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))  # weights flipped
    assert all(torch.all((p == 1) | (p == -1)) for p in after)


@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_fused_step_on_packed_weights_with_bf16_momentum_flips_like_the_eager_step(cls):
    """Packed bits and a bfloat16 momentum through both implementations: the same flips, counters and momentum
    (stochastic rounding draws the same noise: one seeded generator per optimizer)."""
    from bso_lightning.nn.packed import PackedBinaryParameter

    runs = []
    for fused in (False, True):
        params = [PackedBinaryParameter.from_signs(p.detach()) for p in _params()]
        runs.append((params, cls(params, threshold=0.0, fused=fused, momentum_dtype="bfloat16")))
    gen = torch.Generator().manual_seed(4)
    flipped = 0
    for step in range(8):
        grads = _grads(gen, step)
        for params, opt in runs:
            for p, g in zip(params, grads):
                p.packed_grad = g.clone()
            opt.step(time_step=step % 2)
        assert torch.equal(runs[0][1].flip_counts(), runs[1][1].flip_counts())
        flipped += int(runs[0][1].flip_counts().sum())
    (p_eager, eager), (p_fused, fused) = runs
    for a, b in zip(p_eager, p_fused):
        assert torch.equal(a.data, b.data)
        assert (eager.state[a]["momentum"].float() - fused.state[b]["momentum"].float()).abs().max() <= 2 ** -7 * \
            eager.state[a]["momentum"].float().abs().max()
    assert flipped > 0
    assert torch.equal(eager.nonfinite_counts(), fused.nonfinite_counts())
