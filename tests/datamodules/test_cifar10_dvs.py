"""CIFAR10-DVS alone: spikingjelly's integration and AEDAT conversion, the seeded and the authors' splits, damaged
event files (what every event-frame DataModule does: test_event_datamodules.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import datamodules.cifar10_dvs as dvs
from datamodules.datasets.frames import integrate_event_file
from datamodules import CIFAR10DVSDataModule, DataFileError, DatasetNotFoundError
from tests.datamodules.conftest import DVS_TRAIN_PER_CLASS as TRAIN  # (the paper's 900 of 1000, scaled down)
from tests.datamodules.conftest import make_cifar10_dvs as make
from tests.fixtures.make_fixtures import DVS_PER_CLASS as PER_CLASS  # fixture files per class


def test_frames_are_the_integrated_events(private_root):
    """Cached frames = spikingjelly's integration of the events, resized; counts are preserved."""
    from spikingjelly.datasets import integrate_events_by_fixed_frames_number

    root = private_root("cifar10_dvs")
    dm = make(root, image_size=128, normalize=False, crop_padding=0, horizontal_flip=False)
    dm.setup()
    frames = np.load(dm.cache_dir / "frames.npy")
    files = json.loads((dm.cache_dir / "files.json").read_text())["files"]
    i = files.index("bird/cifar10_bird_3.npz")
    with np.load(root / "events_np" / "bird" / "cifar10_bird_3.npz") as npz:
        events = {k: npz[k] for k in "txyp"}
    expected = integrate_events_by_fixed_frames_number(events, "number", 4, 128, 128)
    np.testing.assert_array_equal(frames[i].astype(np.float64), expected)
    assert expected.sum() == len(events["t"])
    # resizing to 48x48 keeps the mean count density
    small = integrate_event_file(root / "events_np" / "bird" / "cifar10_bird_3.npz", 4, "number", 48, 128)
    assert small.shape == (4, 2, 48, 48) and small.dtype == np.float16
    assert np.isclose(small.astype(np.float64).sum() * (128 / 48) ** 2, len(events["t"]), rtol=0.02)


def test_split_is_class_balanced_and_seeded(private_root):
    """(The same split on every run and machine: test_event_datamodules.py.)"""
    a = make(private_root("cifar10_dvs"))
    a.setup()
    labels = np.load(a.cache_dir / "labels.npy")
    train, test = a.train_set.indices, a.test_set.indices
    assert np.bincount(labels[train], minlength=10).tolist() == [TRAIN] * 10
    assert np.bincount(labels[test], minlength=10).tolist() == [PER_CLASS - TRAIN] * 10
    assert not set(train) & set(test) and len(set(train) | set(test)) == len(labels)
    # another seed gives another split; the shuffle is not the identity
    d = make(a.root, seed=1)
    d.setup()
    assert not np.array_equal(train, d.train_set.indices)


def test_raw_aedat_files_are_converted_like_spikingjelly(private_root, data_roots):
    root = private_root("cifar10_dvs_raw")
    assert not (root / "events_np").exists()
    dm = make(root)
    dm.setup()
    converted = root / "events_np" / "ship" / "cifar10_ship_2.npz"
    reference = data_roots["cifar10_dvs"] / "events_np" / "ship" / "cifar10_ship_2.npz"
    with np.load(converted) as a, np.load(reference) as b:
        for key in "txyp":
            np.testing.assert_array_equal(a[key], b[key])
    assert len(dm.train_set) == 10 * TRAIN


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing_key"])
def test_corrupt_event_file_is_reported_by_path(private_root, damage):
    root = private_root("cifar10_dvs")
    bad = root / "events_np" / "frog" / "cifar10_frog_1.npz"
    if damage == "garbage":
        bad.write_bytes(b"not an npz at all")
    elif damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:200])
    else:
        np.savez(bad, t=np.arange(3), x=np.zeros(3))
    dm = make(root)
    with pytest.raises(DataFileError) as info:
        dm.setup()
    assert str(bad) in str(info.value) and info.value.path == bad
    assert not (root / "bso_cache").exists() or not any((root / "bso_cache").iterdir())  # nothing half-built


def test_corrupt_aedat_file_is_reported_by_path(private_root):
    root = private_root("cifar10_dvs_raw")
    bad = root / "extract" / "dog" / "cifar10_dog_0.aedat"
    bad.write_bytes(bad.read_bytes()[:-2])  # an odd number of 32-bit words
    with pytest.raises(DataFileError, match="cifar10_dog_0.aedat"):
        make(root).setup()
    assert not (root / "events_np").exists()


def test_too_few_files_is_an_incomplete_folder(private_root):
    root = private_root("cifar10_dvs")
    with pytest.raises(DatasetNotFoundError, match=r"train_per_class=900 .*airplane: 6"):
        CIFAR10DVSDataModule(root=root).prepare_data()  # the paper's 900 per class
    for f in list((root / "events_np" / "cat").glob("*.npz"))[:3]:
        f.unlink()
    with pytest.raises(DatasetNotFoundError, match="cat: 3"):
        make(root).prepare_data()


def test_worker_processes_read_the_memory_map(private_root):
    dm = make(private_root("cifar10_dvs"), num_workers=2)
    dm.setup()
    dm.train_set[0]  # the main process has opened its memory map: workers must open their own
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 4, 2, 48, 48) and torch.isfinite(x).all()
    assert "_frames" not in dm.train_set.__getstate__() or dm.train_set.__getstate__()["_frames"] is None


def test_first_per_class_split_is_the_authors_file_name_order(private_root):
    """split="first_per_class": per class the first files in plain name order (``_10`` before ``_2``)."""
    import os

    root = private_root("cifar10_dvs")
    for cls in dvs.CLASS_NAMES:  # sample 5 becomes sample 10: name order and number order now differ
        os.rename(root / "events_np" / cls / f"cifar10_{cls}_5.npz", root / "events_np" / cls / f"cifar10_{cls}_10.npz")
    dm = make(root, split="first_per_class")
    dm.setup()
    files = json.loads((dm.cache_dir / "files.json").read_text())["files"]
    expected_train = set()
    for cls in dvs.CLASS_NAMES:  # by hand: sorted(os.listdir(class folder))[:TRAIN]
        expected_train |= {f"{cls}/{name}" for name in sorted(os.listdir(root / "events_np" / cls))[:TRAIN]}
    assert "airplane/cifar10_airplane_10.npz" in expected_train  # the order that matters here
    assert {files[i] for i in dm.train_set.indices} == expected_train
    assert {files[i] for i in dm.test_set.indices} == set(files) - expected_train
    assert dm.split_file.name == f"split_first_per_class_train{TRAIN}.json"
    seeded = make(root, split="seeded")
    seeded.setup()
    assert seeded.cache_dir == dm.cache_dir and seeded.split_file != dm.split_file  # frames shared, splits apart
    with pytest.raises(ValueError, match="split"):
        make(root, split="last")
