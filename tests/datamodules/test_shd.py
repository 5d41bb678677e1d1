from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

import datamodules.event_frames as event_frames
from datamodules import DataFileError, DatasetNotFoundError, SHDDataModule

N_TRAIN, N_TEST = 40, 20  # fixture samples (2 and 1 per class)


def make(root, **kwargs):
    return SHDDataModule(root=root, **{"batch_size": 4, "time_steps": 4, "time_bins": 8, "channel_groups": 16, **kwargs})


def test_official_split_and_batches(private_root):
    dm = make(private_root("shd"))
    assert (dm.num_classes, dm.in_channels, dm.time_steps) == (20, 1, 4)
    dm.setup()
    assert (len(dm.train_set), len(dm.test_set)) == (N_TRAIN, N_TEST) and dm.val_set is dm.test_set
    with h5py.File(dm.root / "shd_test.h5") as f:
        assert [dm.test_set[i][1] for i in range(N_TEST)] == f["labels"][()].tolist()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 4, 1, 8, 16) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_frames_are_spike_counts_per_window_time_bin_and_channel_group(private_root):
    root = private_root("shd")
    dm = make(root, normalize=False, duration=1.0)
    dm.setup()
    with h5py.File(root / "shd_train.h5") as f:
        times = f["spikes"]["times"][5].astype(np.float64)
        units = f["spikes"]["units"][5].astype(np.int64)
    expected = np.zeros((4, 1, 8, 16))
    for t, u in zip(times, units):  # by hand, spike by spike
        if t < 1.0:
            row = int(t / (1.0 / 32))  # 4 windows x 8 bins = 32 bins of 1/32 s
            expected[row // 8, 0, row % 8, u * 16 // 700] += 1
    x, _ = dm.train_set[5]
    np.testing.assert_array_equal(x.numpy(), expected)
    assert 0 < expected.sum() < len(times)  # the fixture has spikes after 1 s: dropped


def test_files_are_found_where_spikingjelly_puts_them(private_root):
    root = private_root("shd")
    (root / "extract").mkdir()
    for name in ("shd_train.h5", "shd_test.h5"):
        shutil.move(root / name, root / "extract" / name)
    dm = make(root)
    dm.setup()
    assert len(dm.train_set) == N_TRAIN


def test_cache_is_reused_and_follows_the_files(private_root, monkeypatch):
    root = private_root("shd")
    first = make(root)
    first.setup()
    monkeypatch.setattr(event_frames, "build_frame_cache", lambda *a, **k: pytest.fail("frames rebuilt"))
    again = make(root)
    again.setup()
    assert torch.equal(first.train_set[3][0], again.train_set[3][0])
    monkeypatch.undo()
    with h5py.File(root / "shd_test.h5", "a") as f:  # a different test file: the cache is rebuilt
        f["extra/note"] = np.arange(100)
    calls = []
    build = event_frames.build_frame_cache
    monkeypatch.setattr(event_frames, "build_frame_cache", lambda *a, **k: (calls.append(1), build(*a, **k)))
    make(root).setup()
    assert calls == [1]


def test_missing_and_corrupt_files_are_named(private_root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="shd_train.h5 and shd_test.h5") as info:
        make(tmp_path / "none").prepare_data()
    assert "download=True" in str(info.value)
    root = private_root("shd")
    (root / "shd_test.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataFileError, match="shd_test.h5"):
        make(root).prepare_data()
    root = private_root("shd", "units")
    with h5py.File(root / "shd_train.h5", "a") as f:
        units = f["spikes"]["units"]
        units[0] = np.full(len(units[0]), 700, dtype=np.uint16)
    with pytest.raises(DataFileError, match=r"sample 0: units outside 0..699"):
        make(root).prepare_data()
    assert not any((root / "bso_cache").glob("*/frames.npy"))  # nothing half-built


@pytest.mark.parametrize("kwargs", [{"time_steps": 0}, {"time_bins": 0}, {"channel_groups": 701}, {"duration": 0.0}])
def test_bad_arguments(kwargs, tmp_path):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SHDDataModule(root=tmp_path, **kwargs)
