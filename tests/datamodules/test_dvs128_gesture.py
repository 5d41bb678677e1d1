from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import datamodules.event_frames as event_frames
from datamodules import DataFileError, DatasetNotFoundError, DVS128GestureDataModule
from datamodules.datasets.frames import integrate_event_file

TRAIN_TRIALS, TEST_TRIALS = 2, 1  # fixture recordings; each holds the 11 gestures once


def make(root, **kwargs):
    return DVS128GestureDataModule(root=root, **{"batch_size": 4, "time_steps": 4, "image_size": 32, **kwargs})


def test_official_split_and_batches(private_root):
    dm = make(private_root("dvs128_gesture"))
    assert (dm.num_classes, dm.in_channels, dm.time_steps) == (11, 2, 4)
    dm.setup()
    assert (len(dm.train_set), len(dm.test_set)) == (11 * TRAIN_TRIALS, 11 * TEST_TRIALS) and dm.val_set is dm.test_set
    files = json.loads((dm.cache_dir / "files.json").read_text())["files"]
    labels = np.load(dm.cache_dir / "labels.npy")
    assert all(files[i].startswith("train/") for i in dm.train_set.indices)
    assert {files[i].split("/")[-1].rsplit("_", 1)[0] for i in dm.test_set.indices} == {"user24_natural"}
    assert np.bincount(labels[dm.train_set.indices]).tolist() == [TRAIN_TRIALS] * 11
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 4, 2, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.isfinite(x).all()


def test_gestures_are_the_csv_time_ranges_of_the_recording(private_root):
    """events_np = spikingjelly's split of the AEDAT 3.1 recording by its labels csv; frames = its integration."""
    from spikingjelly.datasets.utils import load_aedat_v3

    root = private_root("dvs128_gesture")
    dm = make(root, normalize=False, crop_padding=0, image_size=128)
    dm.setup()
    events = load_aedat_v3(root / "extract" / "DvsGesture" / "user02_led.aedat")
    rows = np.loadtxt(root / "extract" / "DvsGesture" / "user02_led_labels.csv", delimiter=",", skiprows=1, dtype=np.int64)
    label, start, end = rows[3]
    mask = (events["t"] >= start) & (events["t"] < end)
    gesture = root / "events_np" / "train" / str(label - 1) / "user02_led_0.npz"
    with np.load(gesture) as npz:
        for key in "txyp":
            np.testing.assert_array_equal(npz[key], events[key][mask])
    files = json.loads((dm.cache_dir / "files.json").read_text())["files"]
    frames = np.load(dm.cache_dir / "frames.npy")
    i = files.index(f"train/{label - 1}/user02_led_0.npz")
    np.testing.assert_array_equal(frames[i], integrate_event_file(gesture, 4, "number", 128, 128))
    assert frames[i].astype(np.float64).sum() == mask.sum()  # every event counted once


def test_cache_is_reused_and_keyed_by_settings(private_root, monkeypatch):
    root = private_root("dvs128_gesture")
    first = make(root)
    first.setup()
    monkeypatch.setattr(event_frames, "build_frame_cache", lambda *a, **k: pytest.fail("frames rebuilt"))
    second = make(root)
    second.setup()
    assert torch.equal(first.test_set[2][0], second.test_set[2][0])
    monkeypatch.undo()
    other = make(root, time_steps=2)
    other.setup()
    assert other.cache_dir != first.cache_dir and other.train_set[0][0].shape == (2, 2, 32, 32)


def test_missing_or_incomplete_folders_are_named(private_root, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="DvsGesture") as info:
        make(tmp_path / "none").prepare_data()
    assert "trials_to_" in str(info.value)
    with pytest.raises(DatasetNotFoundError, match="download/DvsGesture.tar.gz"):
        make(tmp_path / "none", download=True).prepare_data()  # IBM's archive cannot be fetched
    root = private_root("dvs128_gesture")
    (root / "extract" / "DvsGesture" / "trials_to_test.txt").unlink()
    with pytest.raises(DatasetNotFoundError, match="trials_to_test.txt"):
        make(root).prepare_data()


def test_incomplete_events_np_is_named(private_root):
    root = private_root("dvs128_gesture")
    make(root).prepare_data()
    for f in (root / "events_np" / "test" / "7").glob("*.npz"):
        f.unlink()
    with pytest.raises(DatasetNotFoundError, match=r"test/7.*interrupted"):
        make(root, time_steps=2).prepare_data()


def test_missing_or_corrupt_recording_is_named(private_root):
    root = private_root("dvs128_gesture")
    (root / "extract" / "DvsGesture" / "user01_fluorescent_labels.csv").unlink()
    with pytest.raises(DataFileError, match="user01_fluorescent_labels.csv"):
        make(root).prepare_data()
    assert not (root / "events_np").exists()  # nothing half-built
    root = private_root("dvs128_gesture", "other")
    (root / "extract" / "DvsGesture" / "user24_natural_labels.csv").write_text("class,start\nnot,numbers\n")
    with pytest.raises(DataFileError, match="user24_natural.aedat"):
        make(root).prepare_data()
    assert not (root / "events_np").exists()


@pytest.mark.parametrize("kwargs", [{"time_steps": 0}, {"image_size": 129}, {"split_by": "speed"}, {"crop_padding": -1}])
def test_bad_arguments(kwargs, tmp_path):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DVS128GestureDataModule(root=tmp_path, **kwargs)


def test_a_gesture_file_replaced_under_the_same_name_rebuilds_the_cache(private_root):
    """As for CIFAR10-DVS (issue 19): the cache key holds each event file's size and modification time."""
    root = private_root("dvs128_gesture")
    first = make(root)
    first.setup()
    rel = first._list_samples()[0][0]
    index = json.loads((first.cache_dir / "files.json").read_text())["files"].index(rel)
    before = np.load(first.cache_dir / "frames.npy", mmap_mode="r")[index].copy()
    events = dict(np.load(first.events_root / rel))
    np.savez(first.events_root / rel, **{**events, "p": 1 - events["p"]})  # same name, other polarities
    second = make(root)
    second.setup()
    after = np.load(second.cache_dir / "frames.npy", mmap_mode="r")[index]
    assert np.array_equal(after, before[:, ::-1])  # the two polarity channels swapped: integrated again
