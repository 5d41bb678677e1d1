from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import datamodules.cifar10_dvs as dvs
import datamodules.event_frames as event_frames
from datamodules.datasets.frames import integrate_event_file
from datamodules import CIFAR10DVSDataModule, DataFileError, DatasetNotFoundError

PER_CLASS = 6  # fixture files per class
TRAIN = 4  # train_per_class used in these tests (the paper's 900 of 1000, scaled down)


def make(root, **kwargs):
    kwargs = {"batch_size": 8, "time_steps": 4, "train_per_class": TRAIN, **kwargs}
    return CIFAR10DVSDataModule(root=root, **kwargs)


def test_batches(private_root):
    dm = make(private_root("cifar10_dvs"))
    assert (dm.num_classes, dm.in_channels, dm.time_steps) == (10, 2, 4)  # before setup
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (10 * TRAIN, 10 * (PER_CLASS - TRAIN))
    assert dm.test_set is dm.val_set
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (8, 4, 2, 48, 48) and x.dtype == torch.float32
        assert y.shape == (8,) and y.dtype == torch.int64 and set(y.tolist()) <= set(range(10))
        assert torch.isfinite(x).all()
        # nothing below the normalized "no event" level: event counts are >= 0
        floor = (-torch.tensor(dm.mean) / torch.tensor(dm.std)).view(1, 1, 2, 1, 1)
        assert (x >= floor - 1e-4).all() and (x > floor + 1e-4).any()


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


def test_split_is_class_balanced_seeded_and_stable(private_root, data_roots, tmp_path):
    a = make(private_root("cifar10_dvs"))
    a.setup()
    b = make(a.root)
    b.setup()
    labels = np.load(a.cache_dir / "labels.npy")
    train, test = a.train_set.indices, a.test_set.indices
    assert np.bincount(labels[train], minlength=10).tolist() == [TRAIN] * 10
    assert np.bincount(labels[test], minlength=10).tolist() == [PER_CLASS - TRAIN] * 10
    assert not set(train) & set(test) and len(set(train) | set(test)) == len(labels)
    np.testing.assert_array_equal(train, b.train_set.indices)
    # built from scratch elsewhere (another machine): the same files land in the same split
    other = tmp_path / "elsewhere"
    import shutil

    shutil.copytree(data_roots["cifar10_dvs"] / "events_np", other / "events_np")
    c = make(other)
    c.setup()
    np.testing.assert_array_equal(train, c.train_set.indices)
    assert json.loads(a.split_file.read_text()) == json.loads(c.split_file.read_text())
    # another seed gives another split; the shuffle is not the identity
    d = make(a.root, seed=1)
    d.setup()
    assert not np.array_equal(train, d.train_set.indices)


def test_second_setup_reads_the_cache(private_root, monkeypatch):
    root = private_root("cifar10_dvs")
    calls = []
    build = event_frames.build_frame_cache
    monkeypatch.setattr(event_frames, "build_frame_cache", lambda *a, **k: (calls.append(1), build(*a, **k)))
    first = make(root)
    first.prepare_data()
    first.setup()
    assert calls == [1]
    cached = sorted(first.cache_dir.iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in cached}

    def fail(*args, **kwargs):
        raise AssertionError("frames were built again")

    monkeypatch.setattr(event_frames, "build_frame_cache", fail)
    monkeypatch.setattr(event_frames, "integrate_event_file", fail)
    second = make(root)
    second.prepare_data()
    second.setup()
    assert sorted(second.cache_dir.iterdir()) == cached
    assert {p: p.stat().st_mtime_ns for p in cached} == mtimes
    x1, _ = first.val_set[3]
    x2, _ = second.val_set[3]
    assert torch.equal(x1, x2)
    # a different T is a different cache
    monkeypatch.undo()
    third = make(root, time_steps=2)
    third.setup()
    assert third.cache_dir != first.cache_dir and third.train_set[0][0].shape == (2, 2, 48, 48)


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


def test_missing_folder_names_it(tmp_path):
    root = tmp_path / "dvs"
    with pytest.raises(DatasetNotFoundError) as info:
        make(root).prepare_data()
    message = str(info.value)
    assert str(root) in message and "events_np" in message and "download=True" in message


def test_too_few_files_is_an_incomplete_folder(private_root):
    root = private_root("cifar10_dvs")
    with pytest.raises(DatasetNotFoundError, match=r"train_per_class=900 .*airplane: 6"):
        CIFAR10DVSDataModule(root=root).prepare_data()  # the paper's 900 per class
    for f in list((root / "events_np" / "cat").glob("*.npz"))[:3]:
        f.unlink()
    with pytest.raises(DatasetNotFoundError, match="cat: 3"):
        make(root).prepare_data()


def test_normalization_uses_training_statistics(private_root):
    dm = make(private_root("cifar10_dvs"), crop_padding=0, horizontal_flip=False)
    dm.setup()
    x = torch.stack([dm.train_set[i][0] for i in range(len(dm.train_set))])
    per_channel = x.transpose(0, 2).reshape(2, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(2), atol=1e-3)
    assert torch.allclose(per_channel.std(1), torch.ones(2), atol=1e-2)


@pytest.mark.parametrize("kwargs", [{"time_steps": 0}, {"image_size": 200}, {"split_by": "speed"}, {"train_per_class": 0}])
def test_bad_arguments(kwargs, tmp_path):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CIFAR10DVSDataModule(root=tmp_path, **kwargs)


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


def test_an_event_file_replaced_under_the_same_name_rebuilds_the_cache(private_root):
    """The cache was keyed by file names only: a recording whose content changed kept its stale frames (issue 19)."""
    root = private_root("cifar10_dvs")
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
