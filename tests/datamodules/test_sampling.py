"""The training order and the resumable loader (datamodules/sampling.py), on a plain tensor dataset."""

import pytest
import torch
from torch.utils.data import SequentialSampler, TensorDataset

from datamodules.sampling import EpochSeededSampler, ResumableDataLoader

DATA = TensorDataset(torch.arange(10))


def _order(seed: int, epoch: int) -> list[int]:
    sampler = EpochSeededSampler(DATA, seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_the_order_is_a_permutation_drawn_from_seed_and_epoch_only():
    torch.manual_seed(0)
    first = _order(seed=3, epoch=2)
    torch.manual_seed(1)  # the global RNG plays no part
    assert _order(seed=3, epoch=2) == first
    assert sorted(first) == list(range(10)) and len(EpochSeededSampler(DATA)) == 10
    assert _order(seed=3, epoch=3) != first and _order(seed=4, epoch=2) != first


def _loader(**kwargs) -> ResumableDataLoader:
    kwargs.setdefault("sampler", EpochSeededSampler(DATA, seed=0))
    return ResumableDataLoader(DATA, **{"batch_size": 3, **kwargs})


def _values(batches) -> list[list[int]]:
    return [b[0].tolist() for b in batches]


@pytest.mark.parametrize("batch_size", [3, None])  # batches of 3; unbatched samples (batch_size=None)
def test_a_resumed_pass_continues_after_the_batches_handed_out(batch_size):
    loader = _loader(batch_size=batch_size)
    loader.sampler.set_epoch(5)
    full = _values(loader)
    assert len(full) == (4 if batch_size else 10)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 5, "batches": 2, "batch_size": batch_size}

    resumed = _loader(batch_size=batch_size)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(5)
    assert len(resumed) == len(full)
    assert _values(resumed) == full[2:]
    assert resumed.state_dict() == {"epoch": 5, "batches": len(full), "batch_size": batch_size}  # skipped ones too
    assert _values(resumed) == full  # the next pass is whole again


def test_a_state_from_another_epoch_skips_nothing_and_a_state_past_the_end_yields_nothing():
    loader = _loader()
    loader.load_state_dict({"epoch": 1, "batches": 2})
    loader.sampler.set_epoch(2)  # the saved epoch had ended
    assert len(_values(loader)) == 4
    loader.load_state_dict({"epoch": 2, "batches": 9})
    loader.sampler.set_epoch(2)
    assert _values(loader) == []


def test_a_sampler_without_epochs_resumes_by_batch_count():
    loader = _loader(sampler=SequentialSampler(DATA))
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    assert state == {"epoch": None, "batches": 1, "batch_size": 3}
    resumed = _loader(sampler=SequentialSampler(DATA))
    resumed.load_state_dict(state)
    assert _values(resumed) == [[3, 4, 5], [6, 7, 8], [9]]


def test_another_batch_size_is_refused_mid_epoch_and_warned_at_an_epoch_boundary():
    """The skipped samples are a count of batches of the saved size: 2 batches of 3 are not 2 batches of 4 (issue 19:
    a resumed run with another batch size was silently accepted). Older states without a size are not checked."""
    loader = _loader(batch_size=4)
    loader.load_state_dict({"epoch": 5, "batches": 2, "batch_size": 3})
    loader.sampler.set_epoch(5)
    with pytest.raises(ValueError, match=r"^the checkpoint was saved after 2 batches of batch_size=3 in epoch 5; this "
                                         r"run has batch_size=4, so the samples already trained cannot be skipped "
                                         r"exactly\. Resume with batch_size=3"):
        next(iter(loader))
    loader.load_state_dict({"epoch": 4, "batches": 4, "batch_size": 3})  # the saved epoch had ended
    with pytest.warns(UserWarning, match=r"resumed with batch_size=4, the checkpoint was trained with batch_size=3"):
        assert len(_values(loader)) == 3
    loader.load_state_dict({"epoch": 5, "batches": 2})
    reference = _loader(batch_size=4)
    reference.sampler.set_epoch(5)
    assert _values(loader) == _values(reference)[2:]
