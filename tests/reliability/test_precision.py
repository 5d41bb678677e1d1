"""Mixed precision on CPU: weights stay exactly ±1, optimizer state stays fp32."""

from __future__ import annotations

import pytest
import torch

from bso_lightning.optim import split_parameters
from tests.reliability.helpers import digits, make_task, make_trainer


@pytest.mark.parametrize("precision, weight_dtype", [("bf16-mixed", torch.float32), ("bf16-true", torch.bfloat16)])
def test_bf16_trains_with_pm1_weights_and_fp32_momentum(tmp_path, precision, weight_dtype):
    task = make_task()
    before = [p.detach().clone() for p in split_parameters(task.model).binary]
    dtypes = set()
    trainer = make_trainer(tmp_path, precision=precision, max_epochs=1)

    def record(module, args, out):
        if trainer.training:  # (BatchNorm recalibration before validation runs outside autocast)
            dtypes.add(out.dtype)

    task.model[0].register_forward_hook(record)
    trainer.fit(task, datamodule=digits())

    assert dtypes == {torch.bfloat16}  # training really ran in bf16 (autocast / bf16 weights)
    binary = split_parameters(task.model).binary
    for w in binary:
        assert w.dtype == weight_dtype and set(w.unique().tolist()) <= {-1.0, 1.0}
    assert any(not torch.equal(a.to(weight_dtype), b) for a, b in zip(before, binary)), "nothing flipped"
    for param in binary:
        state = trainer.optimizers[0].state[param]
        assert state["momentum"].dtype == torch.float32 and state["v"].dtype == torch.float32
        assert torch.isfinite(state["momentum"]).all() and bool(state["momentum"].abs().sum() > 0)
    for key in ("train/loss", "val/acc"):
        assert torch.isfinite(trainer.callback_metrics[key])
    assert trainer.callback_metrics["faults/nonfinite_grads"] == 0
