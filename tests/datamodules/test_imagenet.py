from __future__ import annotations

import shutil

import pytest
import torch

from datamodules import DatasetNotFoundError, ImageNetDataModule


def test_batches(data_roots):
    dm = ImageNetDataModule(root=data_roots["imagenet"], batch_size=5, num_classes=3, image_size=24, resize_size=28)
    assert (dm.num_classes, dm.in_channels) == (3, 3)
    dm.prepare_data()
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (12, 6) and dm.test_set is dm.val_set
    assert dm.train_set.classes == ["n01440764", "n01443537", "n01484850"]
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (5, 3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.min() >= (0 - 0.485) / 0.229 - 1e-4 and x.max() <= (1 - 0.406) / 0.225 + 1e-4
        assert set(y.tolist()) <= {0, 1, 2}
    # validation is deterministic (resize + center crop), training is random
    assert torch.equal(dm.val_set[0][0], dm.val_set[0][0])


def test_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        ImageNetDataModule(root=tmp_path / "imagenet").setup()
    message = str(info.value)
    assert str(tmp_path / "imagenet") in message and "image-net.org" in message and "ILSVRC2012_img_train.tar" in message


def test_wrong_number_of_classes_is_an_incomplete_folder(data_roots, tmp_path):
    root = tmp_path / "imagenet"
    shutil.copytree(data_roots["imagenet"], root)
    shutil.rmtree(root / "train" / "n01484850")
    shutil.rmtree(root / "val" / "n01484850")
    with pytest.raises(FileNotFoundError, match=r"train has 2 class folders but num_classes=3"):
        ImageNetDataModule(root=root, num_classes=3).setup()
    with pytest.raises(FileNotFoundError, match="num_classes=1000"):
        ImageNetDataModule(root=data_roots["imagenet"]).setup()


def test_bad_sizes(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        ImageNetDataModule(root=tmp_path, image_size=64, resize_size=32)


# --------------------------------------------------------------------------- bad images (issue 14, case 4)

from datamodules import DataFileError  # noqa: E402
from datamodules.datasets.imagenet import load_image  # noqa: E402
from datamodules.sampling import FailedSample  # noqa: E402


def test_corrupt_and_empty_images_fail_before_training_naming_every_file(data_roots):
    """Before: PIL's raw UnidentifiedImageError mid-epoch, at a point that moved with the shuffle."""
    root = data_roots["imagenet_bad_files"]
    dm = ImageNetDataModule(root=root, num_classes=3, image_size=24, resize_size=28)
    with pytest.raises(DataFileError) as info:
        dm.setup("fit")
    message = str(info.value)
    corrupt, empty = root / "train" / "n01440764" / "corrupt.JPEG", root / "train" / "n01443537" / "empty.JPEG"
    assert "2 of 20 image file(s) are empty or not images" in message
    assert f"{corrupt} (UnidentifiedImageError" in message and f"{empty} (empty (0 bytes))" in message
    assert dm.train_set is None  # nothing half set up
    unchecked = ImageNetDataModule(root=root, num_classes=3, image_size=24, resize_size=28, check_images=False)
    unchecked.setup("fit")  # the check can be skipped; decoding then names the file
    index = next(i for i, (p, _) in enumerate(unchecked.train_set.samples) if p.endswith("empty.JPEG"))
    failed = unchecked.train_set[index]  # handed to the loader, which raises it (in the main process)
    assert isinstance(failed, FailedSample) and str(failed.error).startswith(f"cannot read {empty}: not a decodable image")
    unchecked.batch_size = 20
    with pytest.raises(DataFileError, match=f"cannot read {root / 'train'}/\\S+: not a decodable image"):
        next(iter(unchecked.train_dataloader()))


def test_a_truncated_image_body_is_named_when_it_is_decoded(data_roots, tmp_path):
    good = next((data_roots["imagenet"] / "train" / "n01440764").iterdir())
    truncated = tmp_path / "truncated.JPEG"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size * 2 // 3])  # header intact: passes the check
    from datamodules.datasets.imagenet import header_problem

    assert header_problem(str(truncated)) is None
    with pytest.raises(DataFileError, match=rf"cannot read {truncated}: not a decodable image \(OSError: image file "
                                            "is truncated"):
        load_image(str(truncated))


def test_train_and_val_class_sets_that_differ_are_named_before_training(data_roots, tmp_path):
    """Before: ImageFolder built both sets and a RuntimeError said only that they differ (or, with equal counts,
    nothing: every label of one side shifted)."""
    root = tmp_path / "imagenet"
    shutil.copytree(data_roots["imagenet"], root)
    (root / "val" / "n01484850").rename(root / "val" / "n09999999")  # same count, one class each side only
    shutil.rmtree(root / "train" / "n01440764")
    with pytest.raises(DataFileError) as info:
        ImageNetDataModule(root=root, num_classes=2).setup()
    message = str(info.value)
    assert message == (f"cannot read {root / 'val'}: its class folders differ from those of {root / 'train'}: missing "
                       "in val/: n01484850; missing in train/: n01440764, n09999999. Both need the same class folders "
                       "(wnids)")


def test_a_damaged_image_in_a_worker_process_is_one_line_naming_it(data_roots, tmp_path):
    """Before: PyTorch re-raised the worker's error as a RuntimeError whose message was the worker's traceback."""
    root = tmp_path / "imagenet"
    shutil.copytree(data_roots["imagenet"], root)
    damaged = next((root / "val" / "n01443537").iterdir())
    damaged.write_bytes(damaged.read_bytes()[: damaged.stat().st_size * 2 // 3])  # header intact: passes the check
    dm = ImageNetDataModule(root=root, num_classes=3, image_size=24, resize_size=28, batch_size=3, num_workers=2)
    dm.setup("fit")
    with pytest.raises(DataFileError) as info:
        for _ in dm.val_dataloader():
            pass
    assert str(info.value).startswith(f"cannot read {damaged}: not a decodable image (OSError: image file is truncated")
    assert "\n" not in str(info.value) and "Traceback" not in str(info.value) and info.value.path == damaged
    train = ImageNetDataModule(root=root, num_classes=3, image_size=24, resize_size=28, batch_size=3, num_workers=2,
                               train_dir="val")  # the shuffled (resumable) loader raises it too
    train.setup("fit")
    with pytest.raises(DataFileError, match=f"cannot read {damaged}: not a decodable image"):
        for _ in train.train_dataloader():
            pass


# --------------------------------------------------------------------------- the official archives (issue 19)


def _archives(data_roots, tmp_path, monkeypatch):
    """A root holding only the fixture's three archives, their MD5s made the published ones."""
    from datamodules.datasets import imagenet as reader
    from datamodules.safe_files import file_digest

    root = tmp_path / "imagenet"
    shutil.copytree(data_roots["archives"] / "imagenet", root)
    monkeypatch.setattr(reader, "ARCHIVE_MD5", {n: file_digest(root / n, "md5") for n in reader.ARCHIVES})
    return root


def test_the_archives_are_checked_and_unpacked_like_torchvision(data_roots, tmp_path, monkeypatch):
    root = _archives(data_roots, tmp_path, monkeypatch)
    dm = ImageNetDataModule(root=root, num_classes=3, image_size=24, resize_size=28)
    dm.prepare_data()
    dm.setup("fit")
    for split in ("train", "val"):  # the same tree as the fixture's (val sorted by the devkit's ground truth)
        unpacked = sorted(str(p.relative_to(root / split)) for p in (root / split).rglob("*.JPEG"))
        assert unpacked == sorted(str(p.relative_to(data_roots["imagenet"] / split))
                                  for p in (data_roots["imagenet"] / split).rglob("*.JPEG"))
    assert (len(dm.train_set), len(dm.val_set)) == (12, 6)
    assert sorted(p.name for p in root.iterdir()) == sorted(["train", "val", "ILSVRC2012_devkit_t12.tar.gz",
                                                              "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"])


def test_an_archive_with_another_md5_is_refused(data_roots, tmp_path):
    root = tmp_path / "imagenet"
    shutil.copytree(data_roots["archives"] / "imagenet", root)
    with pytest.raises(DataFileError, match=r"ILSVRC2012_img_train.tar: its MD5 is [0-9a-f]+, the published one is "
                                            "1d675b47d978889d74fa0da5fadfb00e"):
        ImageNetDataModule(root=root, num_classes=3).prepare_data()
    assert not (root / "train").exists()


@pytest.mark.parametrize("where", ["train", "class", "val"])
def test_a_hostile_member_in_any_archive_is_refused(where, data_roots, fixtures_module, tmp_path, monkeypatch):
    """A link out in the training archive, ../x in one of its class archives, /abs/x in the validation archive:
    one line naming that archive, nothing written outside root, no train/ or val/ left half-unpacked."""
    import tarfile

    from datamodules.datasets import imagenet as reader
    from datamodules.safe_files import file_digest

    root = _archives(data_roots, tmp_path / "a", monkeypatch)
    absolute, src = tmp_path / "abs_escaped.txt", tmp_path / "src"
    if where == "val":
        shutil.copytree(data_roots["imagenet"] / "val" / "n01440764", src)
        culprit = fixtures_module.hostile_archive(root / "ILSVRC2012_img_val.tar", src, ".", "absolute",
                                                  absolute=str(absolute))
    else:
        with tarfile.open(root / "ILSVRC2012_img_train.tar") as tar:
            tar.extractall(src / "classes", filter="data")
        culprit = root / "ILSVRC2012_img_train.tar"
        if where == "train":
            fixtures_module.hostile_archive(culprit, src / "classes", ".", "link_out")
        else:
            inner = src / "classes" / "n01443537.tar"
            inner.unlink()
            fixtures_module.hostile_archive(inner, data_roots["imagenet"] / "train" / "n01443537", ".", "dotdot")
            fixtures_module.write_archive(culprit, src / "classes", ".")
    monkeypatch.setattr(reader, "ARCHIVE_MD5", {n: file_digest(root / n, "md5") for n in reader.ARCHIVES})
    before = sorted(tmp_path.rglob("*"))
    name = "n01443537.tar" if where == "class" else culprit.name
    with pytest.raises(DataFileError, match=rf"cannot read \S*/{name}: not extracted \(\w+") as info:
        ImageNetDataModule(root=root, num_classes=3).prepare_data()
    assert "\n" not in str(info.value)
    after = [p for p in sorted(tmp_path.rglob("*")) if where != "val" or root / "train" not in (p, *p.parents)]
    assert after == before and not absolute.exists()  # (with a bad val archive, train/ was unpacked before)
