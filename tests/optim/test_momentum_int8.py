"""An int8 momentum (block-wise absmax codes, stochastic rounding): unbiased, does not stall, leaves a skipped
tensor untouched, resumes exactly, converts to and from the other dtypes, flips like the compiled step, and costs
≤ 1.25 bytes per packed binary weight with everything counted."""

import copy

import pytest
import torch

from bso_lightning.nn.packed import PackedBinaryParameter
from bso_lightning.optim import BSO, TBSO, functional
from bso_lightning.optim.functional import QUANT_BLOCK, dequantize_int8, int8_scale_size, quantize_int8_


def _quantize(x, noise):
    q = torch.empty(x.shape, dtype=torch.int8)
    scale = torch.zeros(int8_scale_size(x.numel()))
    quantize_int8_(x.clone(), q, scale, noise)
    return q, scale


def test_codes_use_the_block_absmax_and_round_to_nearest_within_half_a_step():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3 * QUANT_BLOCK + 17, generator=gen) * torch.logspace(-6, 2, 3 * QUANT_BLOCK + 17)
    q, scale = _quantize(x, None)
    assert scale.numel() == 4 and q.abs().max() <= 127
    blocks = list(x.split(QUANT_BLOCK))
    for k, block in enumerate(blocks):  # the largest |x| of every block maps to ±127
        assert scale[k] == pytest.approx(block.abs().max().item() / 127, rel=1e-6)
        assert q.split(QUANT_BLOCK)[k].abs().max() == 127
    error = (dequantize_int8(q, scale) - x).abs()
    per_entry_scale = scale.repeat_interleave(QUANT_BLOCK)[: x.numel()]
    assert torch.all(error <= per_entry_scale * 0.5 * (1 + 1e-5))


def test_stochastic_rounding_is_unbiased_and_lands_on_a_neighbour():
    x = torch.full((QUANT_BLOCK,), 0.3)
    x[0] = 1.0  # scale 1/127: 0.3 lies at 38.1 steps, between the codes 38 and 39
    gen = torch.Generator().manual_seed(1)
    draws = torch.stack([_quantize(x, torch.randint(0, 1 << 16, (QUANT_BLOCK,), dtype=torch.int32,
                                                    generator=gen))[0][1:] for _ in range(400)]).float()
    assert set(draws.unique().tolist()) == {38.0, 39.0}
    assert abs(draws.mean().item() - 0.3 * 127) < 0.01


def _ema(steps, dtype, beta=0.999):
    w = torch.nn.Parameter(torch.ones(4, QUANT_BLOCK))
    opt = BSO([w], threshold=1e9, beta=beta, momentum_dtype=dtype, rounding_seed=3)  # γ huge: no flips
    gen = torch.Generator().manual_seed(2)
    for _ in range(steps):
        w.grad = 0.3 + 0.05 * torch.randn(4, QUANT_BLOCK, generator=gen)
        opt.step()
    state = opt.state[w]
    return dequantize_int8(state["momentum"], state["momentum_scale"]) if dtype == "int8" else state["momentum"]


def test_int8_momentum_tracks_the_gradient_mean_like_float32():
    exact, int8 = _ema(3000, "float32"), _ema(3000, "int8")
    assert abs(int8.mean().item() - exact.mean().item()) < 0.003  # unbiased: no stall (0.3·(1 − 0.999**3000) = 0.285)
    assert (int8 - exact).abs().max() < 0.05


@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_int8_momentum_resumes_exactly_and_skips_a_nonfinite_step(cls):
    def make():
        params = [torch.nn.Parameter(torch.ones(3, QUANT_BLOCK + 5)), torch.nn.Parameter(-torch.ones(7))]
        return params, cls(params, threshold=1e-4, momentum_dtype="int8", rounding_seed=5)

    gen = torch.Generator().manual_seed(4)
    grads = [[torch.randn(3, QUANT_BLOCK + 5, generator=gen), torch.randn(7, generator=gen)] for _ in range(60)]
    grads[30][1][2] = float("nan")
    params, opt = make()
    saved = None
    for k, gs in enumerate(grads):
        if k == 30:
            before = {key: v.clone() for key, v in opt.state[params[1]].items()}
        for p, g in zip(params, gs):
            p.grad = g
        opt.step(time_step=k % 2)
        if k == 30:  # the tensor with the NaN gradient: momentum, scales and weight untouched
            after = opt.state[params[1]]
            assert torch.equal(after["momentum"], before["momentum"])
            assert torch.equal(after["momentum_scale"], before["momentum_scale"])
            assert int(after["nonfinite_steps"]) == 1
        if k == 19:
            saved = (copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params])
    assert opt.flip_counts().sum() >= 0 and opt.state[params[0]]["momentum"].dtype == torch.int8
    params2, opt2 = make()
    for p, value in zip(params2, saved[1]):
        p.data.copy_(value)
    opt2.load_state_dict(saved[0])
    for k, gs in enumerate(grads[20:], start=20):
        for p, g in zip(params2, gs):
            p.grad = g
        opt2.step(time_step=k % 2)
    for p, p2 in zip(params, params2):
        assert torch.equal(p, p2)
        for key in ("momentum", "momentum_scale"):
            assert torch.equal(opt.state[p][key], opt2.state[p2][key])


def test_momentum_converts_between_float32_and_int8_state_dicts():
    w = torch.nn.Parameter(torch.ones(QUANT_BLOCK * 2 + 3))
    fp32 = BSO([w])
    w.grad = torch.linspace(-1, 1, w.numel())
    fp32.step()
    int8 = BSO([w], momentum_dtype="int8")
    int8.load_state_dict(fp32.state_dict())
    state = int8.state[w]
    assert state["momentum"].dtype == torch.int8 and state["momentum_scale"].numel() == 3
    restored = dequantize_int8(state["momentum"], state["momentum_scale"])
    assert (restored - fp32.state[w]["momentum"]).abs().max() <= state["momentum_scale"].max() / 2 * 1.0001
    back = BSO([w], momentum_dtype="bfloat16")
    back.load_state_dict(int8.state_dict())
    assert back.state[w]["momentum"].dtype == torch.bfloat16 and "momentum_scale" not in back.state[w]
    broken = int8.state_dict()
    broken["state"][0]["momentum_scale"] = torch.zeros(2)
    with pytest.raises(ValueError, match="momentum_scale' has 2 entries"):
        BSO([w], momentum_dtype="int8").load_state_dict(broken)


@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_int8_fused_step_flips_like_the_eager_step(cls):
    """From the same state, a compiled step flips what the eager one flips and stores codes within one step
    (the compiled lerp may differ in the last bit, which may move a stochastic rounding across its boundary;
    so each step starts from the eager run's state)."""
    shapes = [(6, 3, 3, 3), (12, 6, 3, 3), (10, 12)]
    gen = torch.Generator().manual_seed(6)
    signs = [(torch.randint(0, 2, s, generator=gen) * 2 - 1).float() for s in shapes]
    runs = []
    for fused in (False, True):
        params = [PackedBinaryParameter.from_signs(s) for s in signs]
        runs.append((params, cls(params, threshold=0.0, fused=fused, momentum_dtype="int8")))
    (p_eager, eager), (p_fused, fused) = runs
    flipped = 0
    for step in range(6):
        fused.load_state_dict(eager.state_dict())
        for a, b in zip(p_eager, p_fused):
            b.data.copy_(a.data)
        grads = [torch.randn(s, generator=gen) * 0.01 for s in shapes]
        for params, opt in runs:
            for p, g in zip(params, grads):
                p.packed_grad = g.clone()
            opt.step(time_step=step % 2)
        assert torch.equal(eager.flip_counts(), fused.flip_counts())
        flipped += int(eager.flip_counts().sum())
        for a, b in zip(p_eager, p_fused):
            assert torch.equal(a.data, b.data)
            assert (eager.state[a]["momentum"].int() - fused.state[b]["momentum"].int()).abs().max() <= 1
            torch.testing.assert_close(eager.state[a]["momentum_scale"], fused.state[b]["momentum_scale"])
    assert flipped > 0


def test_packed_int8_state_of_vgg11_is_at_most_1_25_bytes_per_weight_with_everything_counted(monkeypatch):
    from bso_lightning.models import build_model
    from bso_lightning.nn.layers import set_weight_storage_
    from bso_lightning.nn.routing import split_parameters

    params = split_parameters(set_weight_storage_(build_model("vgg11"), "packed")).binary
    n = sum(p.logical_shape.numel() for p in params)
    opt = TBSO(params, momentum_dtype="int8")
    for t in range(2):
        for p in params:
            p.packed_grad = torch.randn(p.logical_shape) * 1e-3
        opt.step(time_step=t)
        opt.zero_grad()
    counted = opt.memory_bytes()
    assert counted["weights"] == n // 8 and counted["momentum"] == n and counted["gradients"] == 0
    assert counted["workspaces"] == 0 and counted["rounding_noise"] > 0  # (buffers are freed after each step)
    assert sum(counted.values()) / n <= 1.25, counted


def test_online_classifier_trains_with_an_int8_momentum():
    from functools import partial

    import lightning as L

    from bso_lightning.nn.packed import binary_signs
    from bso_lightning.tasks import OnlineClassifier
    from datamodules import DigitsDataModule

    L.seed_everything(0)
    task = OnlineClassifier(arch="small_cnn", arch_kwargs={"width": 4}, time_steps=2,
                            optimizer=partial(TBSO, momentum_dtype="int8", threshold=1e-6), bn_recalibration_batches=0)
    trainer = L.Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    before = [binary_signs(p) for p in task.split.binary]
    trainer.fit(task, datamodule=DigitsDataModule(batch_size=16, image_size=8))
    states = list(trainer.optimizers[0].state.values())
    assert states and all(s["momentum"].dtype == torch.int8 and s["momentum_scale"].abs().sum() > 0 for s in states)
    assert any(not torch.equal(a, binary_signs(p)) for a, p in zip(before, task.split.binary))
