"""SHD alone: spike counts per window, time bin and channel group, where its files are found, damaged HDF5 files
(what every event-frame DataModule does: test_event_datamodules.py)."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from datamodules import DataFileError
from tests.datamodules.conftest import make_shd as make
from tests.fixtures.make_fixtures import SHD_SAMPLES

N_TRAIN, N_TEST = SHD_SAMPLES["train"], SHD_SAMPLES["test"]  # fixture samples (2 and 1 per class)


def test_official_split(private_root):
    dm = make(private_root("shd"))
    dm.setup()
    with h5py.File(dm.root / "shd_test.h5") as f:
        assert [dm.test_set[i][1] for i in range(N_TEST)] == f["labels"][()].tolist()


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


def test_corrupt_files_are_named(private_root):
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
