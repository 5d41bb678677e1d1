"""Stepping each binary tensor inside the backward: the same flips as the ordinary step, and no two binary
gradients alive at once (the peak holds one layer's gradient, not the model's)."""

import pytest
import torch
from spikingjelly.activation_based import functional

from bso_lightning.models import build_model
from bso_lightning.nn.layers import set_weight_storage_
from bso_lightning.nn.packed import binary_grad
from bso_lightning.nn.routing import split_parameters
from bso_lightning.optim import BSO, TBSO


def _run(cls, storage, mode, data, live_log=None):
    """Train on ``data`` (T = 2); ``mode``: ``step`` (backward, then ``step()``), ``hooks`` (``step_in_backward(True)``:
    each tensor steps inside the backward, ``step()`` after it only reports) or ``context`` (the backward inside
    ``stepping_in_backward(t)``, no ``step()`` call). Returns the flip counts of every step, the final signs and the
    optimizer."""
    torch.manual_seed(0)
    model = set_weight_storage_(build_model("small_cnn", num_classes=10, in_channels=1, width=8), storage)
    split = split_parameters(model)
    opt, sgd = cls(split.binary, threshold=1e-7), torch.optim.SGD(split.full_precision, lr=0.05)
    opt.step_in_backward(mode == "hooks")
    if live_log is not None:  # registered after the optimizer's hooks: sees the state right after each step
        def record(p):
            live_log.append(sum(binary_grad(q) is not None for q in split.binary))
        for p in split.binary:
            (p.register_grad_ready_hook if storage == "packed" else p.register_post_accumulate_grad_hook)(record)
    flips = []
    for x, y in data:
        functional.reset_net(model)
        for t in range(2):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            if mode == "context":
                with opt.stepping_in_backward(time_step=t):
                    loss.backward()
                assert not opt.steps_in_backward
            else:
                opt.set_backward_time_step(t)
                loss.backward()
            if mode != "step":
                assert all(binary_grad(p) is None for p in split.binary)  # stepped and freed inside the backward
            if mode != "context":
                opt.step(time_step=t)
            sgd.step()
            opt.zero_grad()
            sgd.zero_grad()
            flips.append(opt.flip_counts().clone())
    weights = [p.signs() if storage == "packed" else p.detach().clone() for p in split.binary]
    return torch.stack(flips), weights, opt


@pytest.mark.parametrize("storage", ["dense", "packed"])
@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_stepping_in_the_backward_flips_what_the_ordinary_step_flips(cls, storage):
    gen = torch.Generator().manual_seed(1)
    data = [(torch.rand(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(6)]
    ref_flips, ref_weights, _ = _run(cls, "dense", "step", data)
    live = []
    flips, weights, _ = _run(cls, storage, "hooks", data, live_log=live)
    assert ref_flips.sum() > 0
    assert torch.equal(flips, ref_flips)  # flip_counts() after step() report the in-backward steps
    assert all(torch.equal(a, b) for a, b in zip(ref_weights, weights))
    assert live and max(live) == 0  # when a tensor has been stepped, no binary gradient is alive anywhere


def test_switching_it_off_removes_the_hooks():
    w = torch.nn.Parameter(torch.ones(3, 2))
    opt = BSO([w])
    opt.step_in_backward(True)
    assert opt.steps_in_backward
    opt.step_in_backward(False)
    assert not opt.steps_in_backward
    (w * torch.ones(3, 2)).sum().backward()
    assert w.grad is not None  # no hook stepped (and freed) it


@pytest.mark.parametrize("storage", ["dense", "packed"])
def test_the_context_manager_steps_inside_one_backward_without_a_step_call(storage):
    gen = torch.Generator().manual_seed(2)
    data = [(torch.rand(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen)) for _ in range(4)]
    ref_flips, ref_weights, _ = _run(TBSO, "dense", "step", data)
    flips, weights, opt = _run(TBSO, storage, "context", data)
    assert torch.equal(flips, ref_flips)
    assert all(torch.equal(a, b) for a, b in zip(ref_weights, weights))
    with pytest.raises(ValueError, match="time_step must be an int >= 0"):
        with opt.stepping_in_backward(time_step=-1):
            pass
