"""Eq. 11–14 are written once: the eager step and the compiled step (``fused=True``) run the same per-tensor
function, ``functional._step_tensor_``, with different buffers, chunking and momentum placement only."""

import pytest
import torch

from bso_lightning.nn.packed import PackedBinaryParameter
from bso_lightning.optim import BSO, TBSO, functional

SHAPES = [(6, 3, 3, 3), (12, 6, 3, 3), (10, 12)]


def _params(packed: bool):
    gen = torch.Generator().manual_seed(0)
    signs = [(torch.randint(0, 2, s, generator=gen) * 2 - 1).float() for s in SHAPES]
    return [PackedBinaryParameter.from_signs(s) if packed else torch.nn.Parameter(s) for s in signs]


@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_both_paths_run_the_one_per_tensor_update(cls, packed, monkeypatch):
    """Eager: chunks of ``EAGER_CHUNK``, reused buffers, a float32 momentum updated in place; the compiled step's
    function (run uncompiled here): whole tensors, fresh buffers, the state written last. The same flips."""
    calls = []
    step_tensor = functional._step_tensor_

    def spy(*args):
        calls.append((args[-3], args[-2] is functional._workspace, args[-1]))  # chunk, reused buffers, in place
        step_tensor(*args)

    monkeypatch.setattr(functional, "_step_tensor_", spy)
    monkeypatch.setattr(functional, "_compiled_fn",
                        lambda name: {"bso": functional._bso_tensors, "tbso": functional._tbso_tensors}[name])
    flips = []
    for fused in (False, True):
        params = _params(packed)
        opt = cls(params, threshold=1e-6, fused=fused)
        gen = torch.Generator().manual_seed(1)
        for p, shape in zip(params, SHAPES):
            g = torch.randn(shape, generator=gen) * 0.01
            if packed:
                p.packed_grad = g
            else:
                p.grad = g
        opt.step()
        flips.append(opt.flip_counts())
    assert calls == [(functional.EAGER_CHUNK, True, True)] * len(SHAPES) + [(None, False, False)] * len(SHAPES)
    assert flips[0].sum() > 0 and torch.equal(flips[0], flips[1])
