"""What the three event-frame DataModules (CIFAR10-DVS, DVS128 Gesture, SHD) share, tested once over all three
(:mod:`datamodules.event_frames`): batches, the frame cache and its key, the split and its statistics, missing data,
argument checks. What one dataset alone does (its reader, its split rule, its damaged files) is in its own file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import h5py
import numpy as np
import pytest
import torch

import datamodules.event_frames as event_frames
from datamodules import DatasetNotFoundError
from tests.datamodules.conftest import DVS_TRAIN_PER_CLASS, make_cifar10_dvs, make_dvs128_gesture, make_shd
from tests.fixtures import make_fixtures as fx


def _swap_polarities(dm, rel: str, before: np.ndarray) -> np.ndarray:
    """Rewrite the event file ``rel`` under its name with the two polarities swapped; its frames swap channels."""
    events = dict(np.load(dm.events_root / rel))
    np.savez(dm.events_root / rel, **{**events, "p": 1 - events["p"]})
    return before[:, ::-1]


def _all_spikes_to_channel_0(dm, rel: str, before: np.ndarray) -> np.ndarray:
    """Rewrite sample ``rel`` ("test/19") in its HDF5 file: every spike on channel 0, so in channel group 0."""
    subset, index = rel.split("/")
    with h5py.File(dm._paths[subset], "a") as f:
        units = f["spikes"]["units"]
        units[int(index)] = np.zeros(len(units[int(index)]), dtype=np.uint16)
    expected = np.zeros_like(before)
    expected[..., 0] = before.sum(-1)
    return expected


@dataclass(frozen=True)
class Case:
    make: Callable  # the DataModule at the tests' settings (tests/datamodules/conftest.py), T = 4
    fixture: str  # its data_roots folder
    num_classes: int
    sizes: tuple[int, int]  # (training, test) samples of the fixture
    frame: tuple[int, int, int]  # [C, H, W] of one frame at the tests' settings
    missing: tuple[str, ...]  # what the error for a missing folder names, besides the folder
    plain: dict  # the settings that turn the random training augmentation off
    bad: tuple[dict, ...]  # arguments out of range (each error names its argument)
    replace: Callable  # rewrites a sample's file under the same name; returns the frames it integrates to now


CASES = {
    "cifar10_dvs": Case(make_cifar10_dvs, "cifar10_dvs", 10,
                        (10 * DVS_TRAIN_PER_CLASS, 10 * (fx.DVS_PER_CLASS - DVS_TRAIN_PER_CLASS)), (2, 48, 48),
                        ("events_np", "download=True"), {"crop_padding": 0, "horizontal_flip": False},
                        ({"time_steps": 0}, {"image_size": 200}, {"split_by": "speed"}, {"train_per_class": 0}),
                        _swap_polarities),
    "dvs128_gesture": Case(make_dvs128_gesture, "dvs128_gesture", 11,
                           (11 * len(fx.GESTURE_TRIALS["train"]), 11 * len(fx.GESTURE_TRIALS["test"])), (2, 32, 32),
                           ("DvsGesture", "trials_to_"), {"crop_padding": 0},
                           ({"time_steps": 0}, {"image_size": 129}, {"split_by": "speed"}, {"crop_padding": -1}),
                           _swap_polarities),
    "shd": Case(make_shd, "shd", 20, (fx.SHD_SAMPLES["train"], fx.SHD_SAMPLES["test"]), (1, 8, 16),
                ("shd_train.h5 and shd_test.h5", "download=True"), {},
                ({"time_steps": 0}, {"time_bins": 0}, {"channel_groups": 701}, {"duration": 0.0}),
                _all_spikes_to_channel_0),
}

names = pytest.mark.parametrize("name", list(CASES))


def _frames(dm) -> np.memmap:
    return np.load(dm.cache_dir / "frames.npy", mmap_mode="r")


def _cache_index(dm, rel: str) -> int:
    return json.loads((dm.cache_dir / "files.json").read_text())["files"].index(rel)


@names
def test_batches(name, private_root):
    case = CASES[name]
    dm = case.make(private_root(case.fixture))
    assert (dm.num_classes, dm.in_channels, dm.time_steps) == (case.num_classes, case.frame[0], 4)  # before setup
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.test_set)) == case.sizes and dm.val_set is dm.test_set
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (dm.batch_size, 4, *case.frame) and x.dtype == torch.float32
        assert y.shape == (dm.batch_size,) and y.dtype == torch.int64 and set(y.tolist()) <= set(range(case.num_classes))
        assert torch.isfinite(x).all()
        # nothing below the normalized "no event" level: event counts are >= 0
        floor = (-torch.tensor(dm.mean) / torch.tensor(dm.std)).view(1, 1, -1, 1, 1)
        assert (x >= floor - 1e-4).all() and (x > floor + 1e-4).any()


@names
def test_second_setup_reads_the_cache_and_T_is_in_its_key(name, private_root, monkeypatch):
    case = CASES[name]
    root = private_root(case.fixture)
    calls = []
    build = event_frames.build_frame_cache
    monkeypatch.setattr(event_frames, "build_frame_cache", lambda *a, **k: (calls.append(1), build(*a, **k)))
    first = case.make(root)
    first.prepare_data()
    first.setup()
    assert calls == [1]
    cached = sorted(first.cache_dir.iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in cached}

    def fail(*args, **kwargs):
        raise AssertionError("frames were built again")

    monkeypatch.setattr(event_frames, "build_frame_cache", fail)
    monkeypatch.setattr(type(first), "_integrate", fail)
    second = case.make(root)
    second.prepare_data()
    second.setup()
    assert sorted(second.cache_dir.iterdir()) == cached
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes
    assert torch.equal(first.val_set[3][0], second.val_set[3][0])
    # a different T is a different cache
    monkeypatch.undo()
    third = case.make(root, time_steps=2)
    third.setup()
    assert third.cache_dir != first.cache_dir and third.train_set[0][0].shape == (2, *case.frame)


@names
def test_a_sample_file_replaced_under_the_same_name_rebuilds_the_cache(name, private_root, monkeypatch):
    """The cache was keyed by file names only: a recording whose content changed kept its stale frames (issue 19).
    The key holds each event file's (SHD: each HDF5 file's) size and modification time."""
    case = CASES[name]
    first = case.make(private_root(case.fixture))
    first.setup()
    rel = first._list_samples()[0][-1]  # a test sample (SHD: in shd_test.h5)
    index = _cache_index(first, rel)
    expected = case.replace(first, rel, _frames(first)[index].copy())
    calls = []
    build = event_frames.build_frame_cache
    monkeypatch.setattr(event_frames, "build_frame_cache", lambda *a, **k: (calls.append(1), build(*a, **k)))
    second = case.make(first.root)
    second.setup()
    assert calls == [1]
    assert np.array_equal(_frames(second)[index], expected)  # integrated again


@names
def test_split_and_statistics_are_the_same_on_every_run_and_machine(name, private_root):
    case = CASES[name]
    a = case.make(private_root(case.fixture))
    a.setup()
    b = case.make(a.root)
    b.setup()
    np.testing.assert_array_equal(a.train_set.indices, b.train_set.indices)
    # built from scratch elsewhere (another machine): the same files land in the same split, the same frames
    c = case.make(private_root(case.fixture, "elsewhere"))
    c.setup()
    np.testing.assert_array_equal(a.train_set.indices, c.train_set.indices)
    np.testing.assert_array_equal(a.test_set.indices, c.test_set.indices)
    assert json.loads(a.split_file.read_text()) == json.loads(c.split_file.read_text())  # the mean/std too
    assert np.array_equal(_frames(a), _frames(c))


@names
def test_missing_folder_names_it_and_what_belongs_in_it(name, tmp_path):
    root = tmp_path / "none"
    with pytest.raises(DatasetNotFoundError) as info:
        CASES[name].make(root).prepare_data()
    message = str(info.value)
    assert str(root) in message and all(part in message for part in CASES[name].missing), message


@names
def test_normalization_uses_training_statistics(name, private_root):
    case = CASES[name]
    dm = case.make(private_root(case.fixture), **case.plain)
    dm.setup()
    x = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    per_channel = x.transpose(0, 2).reshape(case.frame[0], -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(case.frame[0]), atol=1e-3)
    assert torch.allclose(per_channel.std(1), torch.ones(case.frame[0]), atol=1e-2)


@pytest.mark.parametrize("name, kwargs", [(name, kwargs) for name, case in CASES.items() for kwargs in case.bad])
def test_bad_arguments(name, kwargs, tmp_path):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CASES[name].make(tmp_path, **kwargs)
