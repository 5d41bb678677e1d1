from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules import CIFAR10DataModule, CIFAR100DataModule, DataFileError, DatasetNotFoundError
from datamodules.transforms import Cutout


def _all(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize(
    "cls, name, n_train, n_test, num_classes",
    [(CIFAR10DataModule, "cifar10", 20, 6, 10), (CIFAR100DataModule, "cifar100", 10, 6, 100)],
)
def test_batches(cls, name, n_train, n_test, num_classes, data_roots):
    dm = cls(root=data_roots[name], batch_size=4, auto_augment=True)
    assert (dm.num_classes, dm.in_channels, dm.time_steps) == (num_classes, 3, None)  # before setup
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (n_train, n_test, n_test)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32
    assert y.shape == (4,) and y.dtype == torch.int64
    lo = (0 - torch.tensor(dm.mean)) / torch.tensor(dm.std)
    hi = (1 - torch.tensor(dm.mean)) / torch.tensor(dm.std)
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = _all(loader)
        per_channel = x.transpose(0, 1).reshape(3, -1)
        assert (per_channel.min(1).values >= lo - 1e-5).all() and (per_channel.max(1).values <= hi + 1e-5).all()
        assert y.min() >= 0 and y.max() < num_classes


def test_labels_and_pixels_match_the_pickles(data_roots):
    import pickle

    dm = CIFAR10DataModule(root=data_roots["cifar10"])
    dm.setup()
    with open(data_roots["cifar10"] / "cifar-10-batches-py" / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    x, y = _all(dm.test_dataloader())
    assert y.tolist() == raw["labels"]
    pixels = torch.tensor(raw["data"][0].reshape(3, 32, 32), dtype=torch.float32) / 255
    expected = (pixels - torch.tensor(dm.mean)[:, None, None]) / torch.tensor(dm.std)[:, None, None]
    assert torch.allclose(x[0], expected, atol=1e-5)


def test_val_holdout_is_seeded_and_disjoint(data_roots):
    def split(seed):
        dm = CIFAR10DataModule(root=data_roots["cifar10"], val_size=5, seed=seed)
        dm.setup()
        return dm

    a, b, c = split(0), split(0), split(1)
    assert (len(a.train_set), len(a.val_set), len(a.test_set)) == (15, 5, 6)
    # the hold-out uses the evaluation transform: deterministic, no augmentation
    assert torch.equal(a.val_set[0][0], a.val_set[0][0])
    rows = lambda ds: {ds.images[i].tobytes() for i in range(len(ds))}  # noqa: E731
    assert rows(a.val_set) == rows(b.val_set) and rows(a.val_set) != rows(c.val_set)
    assert not rows(a.val_set) & rows(a.train_set)


def test_missing_folder_names_it(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(DatasetNotFoundError) as info:
        CIFAR10DataModule(root=root).setup()
    message = str(info.value)
    assert str(root / "cifar-10-batches-py") in message and "download=True" in message and "data_batch_1" in message


def test_incomplete_folder_names_the_missing_file(private_root):
    root = private_root("cifar100")
    (root / "cifar-100-python" / "test").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing test"):
        CIFAR100DataModule(root=root).prepare_data()


def test_corrupt_pickle_is_reported_by_path(private_root):
    root = private_root("cifar10")
    bad = root / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataFileError) as info:
        CIFAR10DataModule(root=root).setup()
    assert str(bad) in str(info.value)


def test_cutout_zeroes_one_square():
    torch.manual_seed(0)
    img = torch.ones(3, 32, 32)
    for _ in range(20):
        out = Cutout(length=8)(img)
        zero = (out == 0).all(0)
        assert (out[:, ~zero] == 1).all()
        rows, cols = zero.any(1).sum(), zero.any(0).sum()
        assert 1 <= rows <= 8 and 1 <= cols <= 8 and zero.sum() == rows * cols
    with pytest.raises(ValueError, match="length"):
        Cutout(length=0)


@pytest.mark.parametrize("kwargs", [{"val_size": -1}, {"cutout_length": -1}, {"batch_size": 0}])
def test_bad_arguments(kwargs, tmp_path):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CIFAR10DataModule(root=tmp_path, **kwargs)


@pytest.mark.parametrize("cls, root", [(CIFAR10DataModule, "data/cifar10"), (CIFAR100DataModule, "data/cifar100")])
def test_cli_sees_every_argument_with_the_class_default_root(cls, root):
    """The subclasses pass ``**kwargs`` on to the shared ``__init__``; jsonargparse (LightningCLI) must still list
    each argument with its type and default, and the class's own default ``root``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "data")
    assert parser.get_defaults().data.as_dict() == {
        "root": root, "batch_size": 128, "num_workers": 0, "pin_memory": False, "seed": 0, "download": False,
        "val_size": 0, "auto_augment": False, "cutout_length": 16, "crop_padding": 4}
    assert parser.parse_args(["--data.val_size", "5"]).data.val_size == 5
    with pytest.raises(Exception, match="val_size"):
        parser.parse_args(["--data.val_size", "five"])  # typed, not just passed through


# --------------------------------------------------------------------------- hostile and malformed batches (issue 19)


def _rewrite_batch(root, name, **changes):
    import pickle

    path = root / "cifar-10-batches-py" / name
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")  # (the fixture, written by this test suite)
    entry.update(changes)
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)
    return path


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > cifar_payload_ran",))


def test_a_batch_whose_pickle_would_run_code_is_refused_without_running_it(private_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = private_root("cifar10")
    bad = _rewrite_batch(root, "data_batch_2", labels=_RunsCode())
    with pytest.raises(DataFileError, match=r"data_batch_2: not a CIFAR python pickle \(UnpicklingError: it refers "
                                            r"to (posix|os|nt)\.system; only numpy arrays"):
        CIFAR10DataModule(root=root).setup()
    assert not (tmp_path / "cifar_payload_ran").exists()
    assert bad.is_file()


@pytest.mark.parametrize("changes, message", [
    (lambda n: {"labels": [10] * n}, r"data_batch_1: labels must lie in \[0, 10\), found \[10, 10\]"),
    (lambda n: {"data": np.zeros((n, 3000), dtype=np.uint8)}, r"data_batch_1: 'data' must be uint8 rows of 3072 .*3000"),
    (lambda n: {"labels": [0] * (n - 1)}, r"data_batch_1: \d+ images but 'labels' holds int64 \[\d+\]"),
], ids=["label_10", "rows_of_3000_bytes", "one_label_short"])
def test_malformed_batches_are_named_in_one_line(private_root, changes, message):
    from tests.fixtures.make_fixtures import CIFAR10_PER_BATCH

    root = private_root("cifar10")
    _rewrite_batch(root, "data_batch_1", **changes(CIFAR10_PER_BATCH))
    with pytest.raises(DataFileError, match=message) as info:
        CIFAR10DataModule(root=root).setup()
    assert "\n" not in str(info.value)
