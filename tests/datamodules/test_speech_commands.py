from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from datamodules import DatasetNotFoundError, SpeechCommandsDataModule
from datamodules.datasets import speech_commands as reader
from datamodules.speech_commands import CLASSES_12, KEYWORDS, WORDS, WORDS_V1, read_wav

BASE = ("SpeechCommands", "speech_commands_v0.02")


def _all(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _lines(root, name):
    return (root.joinpath(*BASE) / name).read_text().split()


def test_35_words(private_root):
    root = private_root("speech_commands")
    dm = SpeechCommandsDataModule(root=root, batch_size=16)
    assert (dm.num_classes, dm.in_channels, dm.time_steps) == (35, 1, None)  # before setup
    dm.prepare_data()
    dm.setup("fit")
    n_val, n_test = len(_lines(root, "validation_list.txt")), len(_lines(root, "testing_list.txt"))
    assert (len(dm.val_set), len(dm.test_set)) == (n_val, n_test)
    assert len(dm.train_set) == 35 * 4 - n_val - n_test  # everything not listed trains
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    x, y = _all(dm.train_dataloader())
    assert x.min() >= -1 and x.max() <= 1 and x.min() < -0.9 and x.max() > 0.9  # (img - 0.5) / 0.5
    assert sorted(set(y.tolist())) == list(range(35))
    # labels follow the official lists: the validation clip of "yes" has the label of "yes"
    _, y_val = _all(dm.val_dataloader())
    words = [line.split("/")[0] for line in _lines(root, "validation_list.txt")]
    assert [WORDS[i] for i in y_val.tolist()] == words


def test_12_classes(private_root):
    root = private_root("speech_commands")
    dm = SpeechCommandsDataModule(root=root, batch_size=8, class_set="12class")
    assert dm.num_classes == 12 and dm.classes == CLASSES_12
    dm.setup()
    known_train = 2 * len(KEYWORDS)  # two training clips per keyword in the fixture
    extra = math.ceil(known_train * 0.1)
    _, y = _all(dm.train_dataloader())
    counts = np.bincount(y.numpy(), minlength=12)
    assert counts[CLASSES_12.index("_silence_")] == extra and counts[CLASSES_12.index("_unknown_")] == extra
    assert (counts[2:] == 2).all()
    x, y = _all(dm.val_dataloader())
    assert x.shape == (10 + 1 + 1, 1, 32, 32) and sorted(set(y.tolist())) == list(range(12))
    # seeded: a rebuild from scratch selects the same unknown words and silence cuts
    again = SpeechCommandsDataModule(root=private_root("speech_commands", "copy"), class_set="12class")
    again.setup()
    assert torch.equal(again.train_set.tensors[0], dm.train_set.tensors[0])


def test_short_clips_are_padded_and_long_ones_trimmed(tmp_path):
    short = tmp_path / "short.wav"
    soundfile.write(short, np.full(8000, 0.25, dtype=np.float32), 16000, subtype="PCM_16")
    wave = read_wav(short)
    assert wave.shape == (16000,) and np.allclose(wave[:8000], 0.25, atol=1e-4) and (wave[8000:] == 0).all()
    long = tmp_path / "long.wav"
    soundfile.write(long, np.full(20000, 0.5, dtype=np.float32), 16000, subtype="PCM_16")
    assert read_wav(long).shape == (16000,)


def test_corrupt_and_truncated_wavs_are_skipped_counted_and_named(private_root, caplog):
    root = private_root("speech_commands")
    base = root.joinpath(*BASE)
    garbage = base / "yes" / "badc0ffe_nohash_0.wav"
    garbage.write_bytes(b"RIFF\x00\x00\x00\x00this is not audio")
    good = next((base / "no").glob("*.wav")).read_bytes()
    truncated = base / "no" / "deadbeef_nohash_0.wav"
    truncated.write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="datamodules.speech_commands"):
        dm = SpeechCommandsDataModule(root=root)
        dm.setup()
    assert len(dm.train_set) == 35 * 2  # the two bad files are not in it
    assert len(dm.skipped_files) == 2
    assert any(str(garbage) in s for s in dm.skipped_files) and any(str(truncated) in s for s in dm.skipped_files)
    text = caplog.text
    assert "skipped 2 unreadable audio file(s)" in text and str(garbage) in text and str(truncated) in text
    # the count is reported again when the cache is reused
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules.speech_commands"):
        SpeechCommandsDataModule(root=root).setup()
    assert "skipped 2" in caplog.text


def test_cache_is_reused(private_root, monkeypatch):
    root = private_root("speech_commands")
    first = SpeechCommandsDataModule(root=root)
    first.setup()
    mtimes = {p: p.stat().st_mtime_ns for p in first.cache_dir.iterdir()}
    monkeypatch.setattr(reader, "build_feature_cache", lambda *a: pytest.fail("cache rebuilt"))
    second = SpeechCommandsDataModule(root=root)
    second.setup()
    assert {p: p.stat().st_mtime_ns for p in second.cache_dir.iterdir()} == mtimes
    assert torch.equal(first.val_set.tensors[0], second.val_set.tensors[0])


def test_missing_folder_names_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        SpeechCommandsDataModule(root=tmp_path / "gsc").setup()
    message = str(info.value)
    assert str(tmp_path / "gsc" / "SpeechCommands" / "speech_commands_v0.02") in message
    assert "download=True" in message and "validation_list.txt" in message


def test_incomplete_folder_names_what_is_missing(private_root):
    import shutil

    root = private_root("speech_commands")
    shutil.rmtree(root.joinpath(*BASE) / "marvin")
    (root.joinpath(*BASE) / "testing_list.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"no testing_list.txt; no word folders marvin"):
        SpeechCommandsDataModule(root=root).prepare_data()
    shutil.rmtree(root.joinpath(*BASE) / "_background_noise_")
    with pytest.raises(FileNotFoundError, match="_background_noise_"):
        SpeechCommandsDataModule(root=root, class_set="12class").prepare_data()


@pytest.mark.parametrize("kwargs", [{"class_set": "10"}, {"silence_percentage": 120.0}, {"image_size": 0}])
def test_bad_arguments(kwargs, tmp_path):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SpeechCommandsDataModule(root=tmp_path, **kwargs)


def _archive(data_roots, path, extra=()):
    """The fixture's version folder as torchaudio's archive layout (members relative to that folder), plus
    ``extra`` members ``(TarInfo, bytes or None)``."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        tar.add(data_roots["speech_commands"].joinpath(*BASE), arcname=".")
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_download_true_fetches_checks_and_extracts_the_archive(data_roots, tmp_path, monkeypatch):
    """No network in tests: torch.hub's downloader copies the fixture archive (and checks its hash, as it would)."""
    import shutil

    import torch.hub

    from datamodules import speech_commands as module
    from datamodules.safe_files import sha256_of

    served = _archive(data_roots, tmp_path / "served.tar.gz")
    monkeypatch.setitem(module.ARCHIVE_SHA256, "v0.02", sha256_of(served))
    fetched = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        fetched.append((url, hash_prefix))
        shutil.copy(served, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    dm = SpeechCommandsDataModule(root=tmp_path / "new", download=True)
    dm.setup()
    assert fetched == [(module.ARCHIVE_URL.format(version="v0.02"), sha256_of(served))]
    assert len(dm.train_set) == 35 * 2

    again = tmp_path / "again"  # the archive already in root: checked, not fetched
    again.mkdir()
    shutil.copy(served, again / "speech_commands_v0.02.tar.gz")
    SpeechCommandsDataModule(root=again, download=True).prepare_data()
    assert len(fetched) == 1 and (again.joinpath(*BASE) / "validation_list.txt").is_file()


def test_an_archive_in_root_with_another_checksum_is_refused(data_roots, tmp_path):
    from datamodules import DataFileError

    archive = _archive(data_roots, tmp_path / "speech_commands_v0.02.tar.gz")
    with pytest.raises(DataFileError, match=r"speech_commands_v0.02.tar.gz: its SHA-256 is [0-9a-f]+, the published"):
        SpeechCommandsDataModule(root=tmp_path, download=True).prepare_data()
    assert not tmp_path.joinpath(*BASE).exists()


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/bso_abs_escaped.txt", "link_out", "sub/../../escaped.txt"])
def test_archive_members_outside_the_dataset_folder_are_refused(data_roots, tmp_path, monkeypatch, member):
    """A hostile archive (path traversal, an absolute name, a link pointing out): nothing is written outside the
    dataset folder, and no partial dataset folder is left behind."""
    import tarfile

    from datamodules import DataFileError
    from datamodules import speech_commands as module
    from datamodules.safe_files import sha256_of

    root = tmp_path / "root"
    root.mkdir()
    info = tarfile.TarInfo(member)
    if member == "link_out":
        info.type, info.linkname = tarfile.SYMTYPE, "../../outside"
        payload = None
    else:
        payload = b"pwned"
        info.size = len(payload)
    archive = _archive(data_roots, root / "speech_commands_v0.02.tar.gz", [(info, payload)])
    monkeypatch.setitem(module.ARCHIVE_SHA256, "v0.02", sha256_of(archive))
    with pytest.raises(DataFileError, match=r"speech_commands_v0.02.tar.gz: not extracted"):
        SpeechCommandsDataModule(root=root, download=True).prepare_data()
    assert not (tmp_path / "escaped.txt").exists() and not (root / "escaped.txt").exists()
    assert not Path("/tmp/bso_abs_escaped.txt").exists()
    assert sorted(p.name for p in (root / "SpeechCommands").iterdir()) == []  # no partial extraction left


def test_a_word_list_alone_makes_those_words_the_classes(private_root):
    dm = SpeechCommandsDataModule(root=private_root("speech_commands"), words=["yes", "no", "up"], batch_size=4)
    assert dm.class_set == "words" and dm.classes == ("yes", "no", "up") and dm.num_classes == 3
    dm.setup()
    assert sorted(set(dm.train_set.tensors[1].tolist())) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"class_set='35words' needs the words"):  # an explicit class set still rules
        SpeechCommandsDataModule(root=private_root("speech_commands", "again"), words=["yes"], class_set="35words")


def test_a_wav_of_nan_samples_is_skipped_and_named(private_root, caplog):
    root = private_root("speech_commands")
    bad = sorted(root.joinpath(*BASE, "yes").glob("*.wav"))[0]
    samples = np.full(8000, np.nan, dtype=np.float32)
    soundfile.write(bad, samples, 16000, subtype="FLOAT")
    dm = SpeechCommandsDataModule(root=root, batch_size=8)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert len(dm.skipped_files) == 1 and str(bad) in dm.skipped_files[0] and "NaN/Inf" in dm.skipped_files[0]
    assert str(bad) in caplog.text
    for split in (dm.train_set, dm.val_set, dm.test_set):
        assert torch.isfinite(split.tensors[0]).all()


def test_a_file_whose_content_changed_rebuilds_the_cache(private_root):
    import os

    root = private_root("speech_commands")
    SpeechCommandsDataModule(root=root).setup()
    clip = root.joinpath(*BASE, "yes") / _lines(root, "testing_list.txt")[WORDS.index("yes")].split("/")[1]
    soundfile.write(clip, np.zeros(16000, dtype=np.float32), 16000, subtype="PCM_16")  # same name, silence now
    os.utime(clip, ns=(1, 1))  # (a file restored from an archive can carry an old time: the size differs too)
    dm = SpeechCommandsDataModule(root=root)
    dm.setup()
    index = [line.split("/")[0] for line in _lines(root, "testing_list.txt")].index("yes")
    x = dm.test_set.tensors[0][index]
    assert torch.all(x == x.flatten()[0])  # the silent clip's image, not the cached tone's


V1 = ("SpeechCommands", "speech_commands_v0.01")


def test_v001_has_30_words_and_refuses_the_35_word_task(private_root):
    root = private_root("speech_commands_v1")
    dm = SpeechCommandsDataModule(root=root, version="v0.01", class_set="30words", batch_size=8)
    assert dm.num_classes == 30 and dm.classes == WORDS_V1
    dm.setup()
    assert len(dm.train_set) == 30 * 2 and sorted(set(dm.train_set.tensors[1].tolist())) == list(range(30))
    _, y_val = _all(dm.val_dataloader())
    words = [line.split("/")[0] for line in (root.joinpath(*V1) / "validation_list.txt").read_text().split()]
    assert [WORDS_V1[i] for i in y_val.tolist()] == words
    with pytest.raises(DatasetNotFoundError, match=r"no word folders backward, follow, forward, learn, visual .*30words"):
        SpeechCommandsDataModule(root=root, version="v0.01").prepare_data()  # class_set="35words"
    twelve = SpeechCommandsDataModule(root=root, version="v0.01", class_set="12class")
    twelve.setup()
    assert twelve.num_classes == 12 and set(twelve.train_set.tensors[1].tolist()) == set(range(12))
    # v0.02's folder is not read for v0.01 (nor the other way round)
    with pytest.raises(DatasetNotFoundError, match="speech_commands_v0.02"):
        SpeechCommandsDataModule(root=root).prepare_data()


def test_custom_word_subset(private_root):
    root = private_root("speech_commands_custom")
    twelve = SpeechCommandsDataModule(root=root, class_set="12class")
    twelve.setup()  # keywords + cat, dog, wow as _unknown_
    counts = np.bincount(twelve.train_set.tensors[1].numpy(), minlength=12)
    assert (counts[2:] == 2).all() and counts[CLASSES_12.index("_unknown_")] == math.ceil(20 * 0.1)
    words = ["dog", "cat", "yes"]
    own = SpeechCommandsDataModule(root=root, class_set="words", words=words)
    assert own.num_classes == 3 and own.classes == tuple(words)
    own.setup()
    _, y = _all(own.test_dataloader())
    tested = [line.split("/")[0] for line in (root.joinpath(*BASE) / "testing_list.txt").read_text().split()]
    assert [words[i] for i in y.tolist()] == [w for w in tested if w in words]  # labels in the given order
    with pytest.raises(DatasetNotFoundError, match=r"no word folders backward, bed, bird, eight, five"):
        SpeechCommandsDataModule(root=root).prepare_data()  # 35words needs every word
    with pytest.raises(DatasetNotFoundError, match="no word folders marvin"):
        SpeechCommandsDataModule(root=root, class_set="words", words=["yes", "marvin"]).prepare_data()


def test_words_that_a_class_set_needs_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"class_set='12class' needs the words up, down, left, right, on, off, stop, go"):
        SpeechCommandsDataModule(root=tmp_path, class_set="12class", words=["yes", "no", "cat"])
    with pytest.raises(ValueError, match="words=\\[...\\]"):
        SpeechCommandsDataModule(root=tmp_path, class_set="words")
    with pytest.raises(ValueError, match="version"):
        SpeechCommandsDataModule(root=tmp_path, version="v3")
    with pytest.raises(ValueError, match="words must be distinct"):
        SpeechCommandsDataModule(root=tmp_path, class_set="words", words=["yes", "yes"])


def test_caches_of_versions_and_subsets_are_apart(private_root):
    root = private_root("speech_commands_custom")
    a = SpeechCommandsDataModule(root=root, class_set="words", words=["yes", "no"])
    b = SpeechCommandsDataModule(root=root, class_set="words", words=["no", "yes"])
    c = SpeechCommandsDataModule(root=root, version="v0.01", class_set="words", words=["yes", "no"])
    assert len({a.cache_dir, b.cache_dir, c.cache_dir}) == 3


def test_no_readable_clip_in_a_split_is_one_line_naming_the_folder(private_root):
    """Every test clip unreadable: before, a raw traceback (np.concatenate of nothing); now one DataFileError, and
    no cache is written."""
    from datamodules import DataFileError

    root = private_root("speech_commands")
    base = root.joinpath(*BASE)
    for line in _lines(root, "testing_list.txt"):
        (base / line).write_bytes(b"RIFF\x00\x00\x00\x00this is not audio")
    dm = SpeechCommandsDataModule(root=root)
    with pytest.raises(DataFileError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert message.startswith(f"cannot read {base}: no readable clip in the testing split of Speech Commands (35 "
                              "unreadable file(s)") and "\n" not in message
    assert not dm.cache_dir.exists()
