"""``fused=None`` (the default): the compiled step on CUDA (where Triton is), the eager one on CPU; decided per
device at step time, without a host sync; a compiled step that cannot be built falls back to the eager one.

No GPU here: the CUDA side is simulated by declaring ``cpu`` an auto-fused device type and replacing the compiled
entry point with the uncompiled per-tensor functions it would compile (the same code, run eagerly);
``benchmarks/gpu_check.py`` and the ``cuda``-marked tests check the real thing on a device.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch._inductor.exc import InductorError

from bso_lightning.optim import BSO, TBSO, base, functional
from bso_lightning.tasks import OnlineClassifier
from tests.optim.test_no_sync import SYNCING


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter((torch.randint(0, 2, shape, generator=gen) * 2 - 1).float())
            for shape in [(8, 4, 3, 3), (16,), (5, 7)]]


def _grads(step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(shape, generator=gen) for shape in [(8, 4, 3, 3), (16,), (5, 7)]]


def _run(opt, params, steps: int = 4, guard=None) -> None:
    for step in range(steps):
        for p, g in zip(params, _grads(step)):
            p.grad = g
        if guard is None:
            opt.step(time_step=step % 2)
        else:
            with guard():
                opt.step(time_step=step % 2)


@pytest.fixture
def cpu_as_cuda(monkeypatch):
    """Auto mode treats ``cpu`` as it treats ``cuda``; the compiled entry point runs the per-tensor functions eagerly
    and records each call."""
    calls: list[str] = []

    def uncompiled(name):
        fn = {"bso": functional._bso_tensors, "tbso": functional._tbso_tensors}[name]

        def call(*args):
            calls.append(name)
            fn(*args)
        return call

    monkeypatch.setattr(base, "AUTO_FUSED_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(base, "_triton_available", lambda: True)
    monkeypatch.setattr(functional, "_compiled_fn", uncompiled)
    return calls


def test_auto_is_the_default_and_resolves_per_device(monkeypatch):
    opt = TBSO(_params())
    assert opt.fused is None and OnlineClassifier().hparams.optimizer["init_args"].get("fused") is None
    assert opt.fused_on(torch.device("cpu")) is False  # CPU: eager, no compile, no C++ compiler needed
    for triton in (True, False):
        monkeypatch.setattr(base, "_triton_available", lambda triton=triton: triton)
        assert opt.fused_on(torch.device("cuda", 0)) is triton  # CUDA: compiled where Triton is
    assert BSO(_params(), fused=False).fused_on(torch.device("cuda")) is False  # an explicit choice wins
    assert BSO(_params(), fused=True).fused_on(torch.device("cpu")) is True


def test_auto_on_cpu_runs_the_eager_step(monkeypatch):
    monkeypatch.setattr(functional, "_compiled_fn", lambda name: pytest.fail("compiled step used on CPU"))
    params = _params()
    _run(TBSO(params, threshold=0.01), params)


@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_auto_on_a_fused_device_takes_the_compiled_path_without_sync(cls, cpu_as_cuda, monkeypatch):
    kwargs = (dict(threshold=0.01, betas=(0.5, 0.9)) if cls is TBSO
              else dict(threshold=0.01, beta=0.5, reset_momentum_on_flip=True))
    p_auto, p_eager = _params(), _params()
    auto, eager = cls(p_auto, **kwargs), cls(p_eager, fused=False, **kwargs)

    @contextlib.contextmanager
    def no_sync():
        with monkeypatch.context() as patch:
            for name in SYNCING:
                patch.setattr(torch.Tensor, name, lambda *a, **k: pytest.fail("host-device sync inside step()"))
            for name in ("tensor", "as_tensor"):  # from Python data onto CUDA: a blocking copy (use torch.full)
                patch.setattr(torch, name, lambda *a, **k: pytest.fail("tensor from host data inside step()"))
            yield

    _run(auto, p_auto, guard=no_sync)
    _run(eager, p_eager)
    assert cpu_as_cuda == [cls.__name__.lower()] * 4  # one call of the compiled entry point per step
    flipped = 0
    for a, e, start in zip(p_auto, p_eager, _params()):
        assert torch.equal(a, e)  # the same flips as the eager step
        torch.testing.assert_close(auto.state[a]["momentum"], eager.state[e]["momentum"])
        flipped += int((a != start).sum())
    assert flipped > 0


def test_auto_falls_back_to_eager_when_the_compiled_step_cannot_be_built(cpu_as_cuda, monkeypatch):
    def broken(name):
        def call(*args):
            cpu_as_cuda.append(name)
            raise InductorError(RuntimeError("Failed to find C compiler"), None)
        return call

    monkeypatch.setattr(functional, "_compiled_fn", broken)
    p_auto, p_eager = _params(), _params()
    auto, eager = TBSO(p_auto, betas=(0.5, 0.9)), TBSO(p_eager, betas=(0.5, 0.9), fused=False)
    with pytest.warns(RuntimeWarning, match="compiled step could not be built on cpu.*stepping eagerly"):
        _run(auto, p_auto)
    _run(eager, p_eager)
    assert cpu_as_cuda == ["tbso"]  # tried once; later steps go straight to the eager step
    assert auto.fused_on(torch.device("cpu")) is False
    for a, e in zip(p_auto, p_eager):
        assert torch.equal(a, e) and torch.equal(auto.state[a]["momentum"], eager.state[e]["momentum"])
    explicit = TBSO(_params(), threshold=0.01, fused=True)  # an explicit fused=True reports the failure
    with pytest.raises(InductorError):
        _run(explicit, explicit.binary_parameters(), steps=1)
