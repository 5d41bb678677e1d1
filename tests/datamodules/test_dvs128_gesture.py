"""DVS128 Gesture alone: the official split, the recordings cut by their labels csv, the archive found by hand,
damaged recordings (what every event-frame DataModule does: test_event_datamodules.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from datamodules import DataFileError, DatasetNotFoundError
from datamodules.datasets.frames import integrate_event_file
from tests.datamodules.conftest import make_dvs128_gesture as make
from tests.fixtures.make_fixtures import GESTURE_TRIALS

TRAIN_TRIALS = len(GESTURE_TRIALS["train"])  # fixture recordings; each holds the 11 gestures once


def test_official_split(private_root):
    dm = make(private_root("dvs128_gesture"))
    dm.setup()
    files = json.loads((dm.cache_dir / "files.json").read_text())["files"]
    labels = np.load(dm.cache_dir / "labels.npy")
    assert all(files[i].startswith("train/") for i in dm.train_set.indices)
    assert {files[i].split("/")[-1].rsplit("_", 1)[0] for i in dm.test_set.indices} == {"user24_natural"}
    assert np.bincount(labels[dm.train_set.indices]).tolist() == [TRAIN_TRIALS] * 11


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


def test_missing_or_incomplete_folders_are_named(private_root, tmp_path):
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
