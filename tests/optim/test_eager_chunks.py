"""The eager step works through large tensors in fixed-size chunks: the same results as one whole-tensor pass,
and reused buffers that stay small whatever the tensor size."""

import pytest
import torch

from bso_lightning.nn.packed import PackedBinaryParameter
from bso_lightning.optim import BSO, TBSO, functional

SHAPES = [(3 * 4096 + 13,), (40, 1000), (5, 7)]  # larger than a chunk (set to 4096 below), ragged, small


def _run(cls, storage, momentum_dtype, chunk, monkeypatch):
    monkeypatch.setattr(functional, "EAGER_CHUNK", chunk)
    gen = torch.Generator().manual_seed(0)
    signs = [(torch.randint(0, 2, s, generator=gen) * 2 - 1).float() for s in SHAPES]
    params = ([PackedBinaryParameter.from_signs(s) for s in signs] if storage == "packed"
              else [torch.nn.Parameter(s) for s in signs])
    kwargs = dict(reset_momentum_on_flip=True, beta=0.5) if cls is BSO else {}
    opt = cls(params, threshold=1e-3, momentum_dtype=momentum_dtype, **kwargs)
    flips = []
    for step in range(6):
        for p in params:
            g = torch.randn(p.logical_shape if storage == "packed" else p.shape, generator=gen) * 0.01
            if step == 2:
                g.view(-1)[-1] = float("nan")
            if storage == "packed":
                p.packed_grad = g
            else:
                p.grad = g
        opt.step(time_step=step % 3)
        flips.append(opt.flip_counts())
    return params, opt, torch.stack(flips)


@pytest.mark.parametrize("momentum_dtype", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("storage", ["dense", "packed"])
@pytest.mark.parametrize("cls", [BSO, TBSO])
def test_chunked_step_equals_the_whole_tensor_step(cls, storage, momentum_dtype, monkeypatch):
    whole = _run(cls, storage, momentum_dtype, None, monkeypatch)
    chunked = _run(cls, storage, momentum_dtype, 4096, monkeypatch)
    assert whole[2].sum() > 0 and torch.equal(whole[2], chunked[2])
    for a, b in zip(whole[0], chunked[0]):
        assert torch.equal(a.data, b.data)
        for key, value in whole[1].state[a].items():
            assert torch.equal(value, chunked[1].state[b][key]), key
    assert whole[1].nonfinite_counts().tolist() == [1, 1, 1]


def test_buffers_are_bounded_by_the_chunk_and_freed_after_the_step(monkeypatch):
    monkeypatch.setattr(functional, "EAGER_CHUNK", 1 << 16)
    sizes = []
    workspace = functional._workspace

    def recording(device, numel, names):
        ws = workspace(device, numel, names)
        sizes.append(functional.workspace_bytes(device))
        return ws

    monkeypatch.setattr(functional, "_workspace", recording)
    n = 1 << 20
    p = PackedBinaryParameter.from_signs(torch.ones(n))
    opt = TBSO([p], momentum_dtype="bfloat16")
    p.packed_grad = torch.randn(n)
    opt.step()
    # float32 gradient and momentum buffers, a byte and 1/8 int32 per entry for the packing: ≤ 9.5 bytes per entry
    assert len(sizes) == 1 and 0 < sizes[0] <= 9.5 * (1 << 16)
    assert functional.workspace_bytes() == 0 and opt.memory_bytes()["workspaces"] == 0


def test_a_non_contiguous_dense_weight_is_updated_in_place():
    w = torch.nn.Parameter(torch.ones(4, 6).t())  # (6, 4), column-major
    assert not w.is_contiguous()
    opt = BSO([w], threshold=0.0, beta=0.0)
    w.grad = torch.ones(6, 4)
    opt.step()
    assert torch.equal(w.detach(), -torch.ones(6, 4)) and int(opt.flip_counts()) == 24
