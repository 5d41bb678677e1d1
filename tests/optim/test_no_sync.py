"""step() must not synchronise host and device: no .item(), no bool(tensor), no Python `if`
on tensor values. On CPU we forbid the Python entry points of such syncs during step(); on
CUDA we also run under torch.cuda.set_sync_debug_mode("error")."""

import pytest
import torch

from bso_lightning.optim import BSO, TBSO

SYNCING = ["__bool__", "item", "tolist", "__int__", "__float__", "__index__", "numpy"]


def _make(cls, device, dtype=torch.float32, fused=False):
    gen = torch.Generator().manual_seed(0)
    params = [
        torch.nn.Parameter((torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(device, dtype))
        for shape in [(8, 4, 3, 3), (16,), (5, 7)]
    ]
    opt = (cls(params, threshold=0.01, fused=fused) if cls is TBSO
           else cls(params, threshold=0.01, reset_momentum_on_flip=True, fused=fused))
    return opt, params


def _set_grads(params, bad_index=None):
    for i, p in enumerate(params):
        p.grad = torch.randn(p.shape, device=p.device, dtype=p.dtype)
        if i == bad_index:
            p.grad.view(-1)[0] = float("nan")


def _steps(opt, params):
    for t in range(3):
        _set_grads(params, bad_index=1 if t == 1 else None)
        opt.step(time_step=t)


@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_step_uses_no_python_level_sync(cls, fused, monkeypatch):
    opt, params = _make(cls, "cpu", fused=fused)
    if fused:  # compile first (tracing may inspect values); the compiled steps below must not sync
        for t in range(3):
            _set_grads(params)
            opt.step(time_step=t)
        for state in opt.state.values():
            state["nonfinite_steps"].zero_()

    def forbidden(*args, **kwargs):
        raise AssertionError("host-device sync inside step()")

    original_step = opt.step

    def guarded_step(*args, **kwargs):
        with monkeypatch.context() as patch:
            for name in SYNCING:
                patch.setattr(torch.Tensor, name, forbidden)
            return original_step(*args, **kwargs)

    opt.step = guarded_step
    _steps(opt, params)
    assert opt.nonfinite_counts().tolist() == [0, 1, 0]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_cuda_step_does_not_sync(cls, dtype):
    opt, params = _make(cls, "cuda", dtype)
    _set_grads(params)
    opt.step(time_step=0)  # state initialisation may allocate; steady state must not sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _steps(opt, params)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert opt.nonfinite_counts().tolist() == [0, 1, 0]
    for p in params:
        assert torch.all((p == 1) | (p == -1))
        assert opt.state[p]["momentum"].dtype == torch.float32
