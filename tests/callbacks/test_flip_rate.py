"""FlipRateCallback: hand-checked flip fractions per layer and per t, skipped non-finite updates, T-BSO thresholds."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bso_lightning.callbacks import FlipRateCallback
from bso_lightning.callbacks.flip_rate import binary_layer_names, find_binary_optimizer
from bso_lightning.nn import BinaryLinear
from bso_lightning.optim import BSO, TBSO

from .conftest import csv_trainer, read_metrics, rows_with

# Weights flipped per (time step, layer) at every step; the layers hold 32 and 12 weights.
FLIPS = {0: (4, 3), 1: (8, 0)}
NUMEL = (32, 12)
TBSO_THRESHOLD = 1e-3
EPS = 1e-10


class FlipProbe(L.LightningModule):
    """Sets gradients that make the optimizer flip exactly ``FLIPS[t]`` weights per layer.

    With β (β1) = 0 the momentum is the gradient; a gradient of ``W * mask`` gives ``W·M = mask``, so
    exactly the masked weights flip (threshold 0 for BSO; γ·sqrt(v + ε) ≪ 1 for T-BSO). At batch 2,
    t = 0 the second layer's gradient is NaN: that update is skipped (and its 3 flips with it).
    """

    def __init__(self, optimizer: str = "bso", pass_time_step: bool = True) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.optimizer_name = optimizer
        self.pass_time_step = pass_time_step
        self.model = nn.Sequential(BinaryLinear(8, 4), BinaryLinear(4, 3))

    def configure_optimizers(self):
        params = list(self.model.parameters())
        if self.optimizer_name == "bso":
            return BSO(params, threshold=0.0, beta=0.0)
        return TBSO(params, threshold=TBSO_THRESHOLD, betas=(0.0, 0.0), eps=EPS)

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        for t, ks in FLIPS.items():
            for i, (p, k) in enumerate(zip(self.model.parameters(), ks)):
                mask = torch.zeros(p.numel())
                mask[:k] = 1.0
                p.grad = p.detach() * mask.view_as(p)
                if batch_idx == 2 and t == 0 and i == 1:
                    p.grad = torch.full_like(p, float("nan"))
            if self.pass_time_step:
                opt.step(time_step=t)
            else:
                opt.step()  # the callback infers t from the call order within the batch
        return None


def _fit(tmp_path, module, callback, batches=4, read=True):
    loader = DataLoader(TensorDataset(torch.zeros(batches, 1)), batch_size=1)
    trainer = csv_trainer(tmp_path, [callback], max_epochs=1)
    trainer.fit(module, train_dataloaders=loader)
    return read_metrics(tmp_path) if read else None


def _expected_interval(skipped_layer1_t0: int) -> dict[str, float]:
    """Metrics of an interval of 2 batches (4 optimizer steps, 2 per t)."""
    per_layer = [2 * (FLIPS[0][i] + FLIPS[1][i]) for i in range(2)]
    per_layer[1] -= 3 * skipped_layer1_t0
    per_t = [2 * sum(FLIPS[t]) for t in (0, 1)]
    per_t[0] -= 3 * skipped_layer1_t0
    total = sum(NUMEL)
    return {
        "flips/overall": sum(per_layer) / (total * 4),
        "flips/model.0": per_layer[0] / (NUMEL[0] * 4),
        "flips/model.1": per_layer[1] / (NUMEL[1] * 4),
        "flips/t0": per_t[0] / (total * 2),
        "flips/t1": per_t[1] / (total * 2),
        "flips/t0/model.0": 2 * FLIPS[0][0] / (NUMEL[0] * 2),
        "flips/t1/model.1": 0.0,
        "flips/nonfinite_skipped": float(skipped_layer1_t0),
    }


@pytest.mark.parametrize("pass_time_step", [True, False], ids=["time_step_kwarg", "inferred_t"])
def test_bso_flip_fractions_are_exact(tmp_path, pass_time_step):
    callback = FlipRateCallback(per_layer_time_step=True)
    rows = rows_with(_fit(tmp_path, FlipProbe("bso", pass_time_step), callback), "flips/overall")
    assert [row["step"] for row in rows] == [1, 3]  # log_every_n_steps=2 batches, same rows as self.log
    for row, skipped in zip(rows, (0, 1)):
        for name, value in _expected_interval(skipped).items():
            assert row[name] == value, name
    assert not any(name.startswith("tbso/") for name in rows[0])  # BSO has no per-t thresholds
    assert [set(h) - {"step"} for h in callback.history] == [set(rows[0]) - {"step", "epoch"}] * 2


def test_tbso_thresholds_and_flip_fractions(tmp_path):
    rows = rows_with(_fit(tmp_path, FlipProbe("tbso"), FlipRateCallback()), "flips/overall")
    assert len(rows) == 2
    for row, skipped in zip(rows, (0, 1)):
        for name in ("flips/overall", "flips/model.0", "flips/model.1", "flips/t0", "flips/t1"):
            assert row[name] == _expected_interval(skipped)[name], name
    # β2 = 0: v[t] = mean(G²) = (flipped weights)/numel of the last update, so the threshold is
    # γ·sqrt(k/numel + ε). (Layer 1 at t = 0 was skipped at batch 2 but updated again at batch 3.)
    last = rows[-1]
    for t, ks in FLIPS.items():
        for i, k in enumerate(ks):
            expected = TBSO_THRESHOLD * math.sqrt(k / NUMEL[i] + EPS)
            assert last[f"tbso/threshold_t{t}/model.{i}"] == pytest.approx(expected, rel=1e-6)
    assert "flips/t0/model.0" not in last  # per-layer-per-t is off by default


def test_interval_is_configurable_and_zero_disables(tmp_path):
    rows = _fit(tmp_path, FlipProbe("bso"), FlipRateCallback(log_every_n_steps=4, per_layer=False))
    flips = rows_with(rows, "flips/overall")
    assert [row["step"] for row in flips] == [3]
    assert "flips/model.0" not in flips[0] and "flips/t0" in flips[0]
    # 8 steps over 4 batches, layer 1's t = 0 update of batch 2 skipped
    assert flips[0]["flips/overall"] == (4 * 15 - 3) / (44 * 8)

    callback = FlipRateCallback(log_every_n_steps=0)
    _fit(tmp_path / "off", FlipProbe("bso"), callback, read=False)
    assert not callback.history


def test_accumulation_does_not_sync_host_and_device(monkeypatch):
    """The step post-hook only queues device work (no .item()/.tolist()/bool(tensor))."""
    params = [nn.Parameter(torch.ones(4, 3)), nn.Parameter(-torch.ones(5))]
    opt = TBSO(params, threshold=0.0, betas=(0.0, 0.0))
    callback = FlipRateCallback()
    callback.attach(opt)  # outside a Trainer

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device sync in the step hook")

    for t in range(3):
        for p in params:
            p.grad = p.detach().clone()
        with monkeypatch.context() as patch:
            for name in ["__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy"]:
                patch.setattr(torch.Tensor, name, forbidden)
            opt.step(time_step=t)
    metrics = callback.compute()
    assert metrics["flips/t0"] == 1.0 and metrics["flips/t2"] == 1.0  # every weight agrees with its gradient
    assert metrics["flips/param1"] == 1.0
    assert callback.compute() == {}  # accumulators reset
    callback.detach()
    opt.step(time_step=0)
    assert callback.compute() == {}  # no longer counting


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_accumulation_does_not_sync():
    params = [nn.Parameter(torch.ones(64, 32, device="cuda")), nn.Parameter(-torch.ones(128, device="cuda"))]
    opt = TBSO(params, threshold=0.0, betas=(0.0, 0.0))
    callback = FlipRateCallback()
    callback.attach(opt)
    for p in params:
        p.grad = p.detach().clone()
    opt.step(time_step=0)  # grows the table once (allocation only)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for t in range(4):
            for p in params:
                p.grad = p.detach().clone()
            opt.step(time_step=t)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert callback.compute()["flips/overall"] == 1.0


def test_needs_a_binary_optimizer():
    with pytest.raises(ValueError, match="flip_counts"):
        find_binary_optimizer([torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)])
    with pytest.raises(ValueError, match="log_every_n_steps"):
        FlipRateCallback(log_every_n_steps=-1)


def test_layer_names_follow_the_module():
    model = nn.Sequential(BinaryLinear(2, 2), nn.Linear(2, 2), BinaryLinear(2, 2))
    params = [model[0].weight, model[2].weight, torch.zeros(1)]
    assert binary_layer_names(model, params) == ["0", "2", "param2"]


# ----------------------------------------------------------------- end-of-training summary

def test_final_flip_rate_covers_the_last_batches_and_warns(tmp_path, monkeypatch):
    from bso_lightning.callbacks.flip_rate import LateFlipWarning
    from bso_lightning.tasks import gap

    monkeypatch.setattr(gap, "MIN_BATCHES_FOR_WARNINGS", 4)  # this run has 4 batches

    callback = FlipRateCallback(summary_batches=2, log_every_n_steps=3)  # 4 batches: one step left unlogged
    with pytest.warns(LateFlipWarning, match=r"still flip per step at the end of training"):
        rows = _fit(tmp_path, FlipProbe("bso"), callback)
    # batches 2 and 3: 15 flips per batch (2 steps), less the 3 skipped at batch 2, t = 0; 44 weights
    expected = (15 + 12) / (4 * sum(NUMEL))
    assert callback.summary == {"flips/final": pytest.approx(expected), "batches": 2.0}
    assert rows_with(rows, "flips/final")[-1]["flips/final"] == pytest.approx(expected)
    assert len(rows_with(rows, "flips/overall")) == 2  # the interval cut short by the end is flushed too


def test_late_flip_warning_is_quiet_on_a_handful_of_batches(tmp_path, recwarn):
    """The same 4-batch run as above, with the default minimum run length: no warning (a smoke run)."""
    callback = FlipRateCallback(summary_batches=2, log_every_n_steps=3)
    _fit(tmp_path, FlipProbe("bso"), callback, read=False)
    assert callback.summary["flips/final"] > callback.warn_above  # would warn on a long run
    assert not [w for w in recwarn if "flip per step" in str(w.message)]


def test_final_flip_rate_quiet_below_the_bound(tmp_path, recwarn):
    callback = FlipRateCallback(summary_batches=10, warn_above=None)
    _fit(tmp_path, FlipProbe("tbso"), callback, read=False)
    assert callback.summary["flips/final"] == pytest.approx((3 * 15 + 12) / (8 * sum(NUMEL)))
    assert callback.summary["batches"] == 4.0
    assert not [w for w in recwarn if "flip per step" in str(w.message)]


class _SGDOnly(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_flip_rate_callback_can_sit_idle_without_a_binary_optimizer(tmp_path):
    callback = FlipRateCallback(require_binary_optimizer=False)
    _fit(tmp_path, _SGDOnly(), callback, read=False)
    assert callback.summary == {} and callback.history == []
    with pytest.raises(ValueError, match="no optimizer with flip_counts"):
        _fit(tmp_path / "strict", _SGDOnly(), FlipRateCallback(), read=False)


@pytest.mark.parametrize("kwargs, message", [({"summary_batches": 0}, "summary_batches must be an int >= 1"),
                                             ({"warn_above": 2.0}, r"warn_above must lie in \[0, 1\]")])
def test_summary_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlipRateCallback(**kwargs)
