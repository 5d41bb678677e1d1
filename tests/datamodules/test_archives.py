"""download=True for every DataModule that reads an archive (issue 19): the archive is fetched (or found), checked
against its published checksum, and extracted by ``datamodules.safe_files`` only. A hostile archive (a member
``../x``, an absolute name, a link pointing out) is refused with one line naming it, and nothing is written outside
the dataset's root. No network: torch.hub's downloader copies the fixture archives (tests/fixtures/make_fixtures.py)."""

from __future__ import annotations

import re
import shutil
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch.hub

from datamodules import CIFAR10DataModule, DataFileError, DatasetNotFoundError, SpeechCommandsDataModule
from datamodules.datasets import cifar10_dvs as dvs_reader
from datamodules.datasets import dvs128_gesture as gesture_reader
from datamodules.datasets import shd as shd_reader
from datamodules.datasets import speech_commands as speech_reader
from datamodules.safe_files import file_digest
from tests.datamodules.conftest import make_cifar10_dvs, make_dvs128_gesture, make_shd


@dataclass
class Case:
    make: Callable[..., object]
    archives: list[str]  # paths relative to root, as the DataModule expects them
    fixture: str  # folder of data_roots["archives"] holding them in that layout
    downloadable: bool
    hostile: tuple[str, str, str]  # (archive, fixture folder it holds, its top folder)
    n_train: int


CASES = {
    "cifar10": Case(lambda root, **k: CIFAR10DataModule(root=root, batch_size=4, **k), ["cifar-10-python.tar.gz"],
                    "cifar10", True, ("cifar-10-python.tar.gz", "cifar10/cifar-10-batches-py", "cifar-10-batches-py"), 20),
    "cifar10_dvs": Case(make_cifar10_dvs, [f"download/{name}" for name, _, _ in dvs_reader.ARCHIVES], "cifar10_dvs", True,
                        ("download/airplane.zip", "cifar10_dvs_raw/extract/airplane", "airplane"), 40),
    "dvs128_gesture": Case(make_dvs128_gesture, ["download/DvsGesture.tar.gz"], "dvs128_gesture", False,
                           ("download/DvsGesture.tar.gz", "dvs128_gesture/extract/DvsGesture", "DvsGesture"), 22),
    "shd": Case(make_shd, [f"download/{name}" for name, _, _ in shd_reader.ARCHIVES], "shd", True,
                ("download/shd_train.h5.zip", "shd_train_only", "."), 40),
}


def _publish(monkeypatch, name: str, root: Path) -> None:
    """Make the fixture archives in ``root`` the "published" ones: their MD5s replace the real datasets'."""
    def md5(rel: str) -> str:
        return file_digest(root / rel, "md5")

    if name == "cifar10":
        monkeypatch.setattr(CIFAR10DataModule.variant.tv_class, "tgz_md5", md5("cifar-10-python.tar.gz"))
    elif name == "dvs128_gesture":
        monkeypatch.setattr(gesture_reader, "ARCHIVE_MD5", md5("download/DvsGesture.tar.gz"))
    else:
        reader = dvs_reader if name == "cifar10_dvs" else shd_reader
        monkeypatch.setattr(reader, "ARCHIVES", tuple((n, url, md5(f"download/{n}")) for n, url, _ in reader.ARCHIVES))


def _serve(monkeypatch, source: Path) -> list[str]:
    """torch.hub's downloader copies the file of that name from ``source`` (any folder below it); returns the URLs."""
    fetched = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        fetched.append(url)
        [found] = [p for p in source.rglob(Path(dst).name)]
        shutil.copy(found, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    return fetched


@pytest.mark.parametrize("name", list(CASES))
def test_download_true_checks_and_extracts_the_archives(name, data_roots, tmp_path, monkeypatch):
    case = CASES[name]
    served = data_roots["archives"] / case.fixture
    _publish(monkeypatch, name, served)
    fetched = _serve(monkeypatch, served)
    root = tmp_path / "root"
    if not case.downloadable:  # (IBM's site needs a login: the archive is put into root/download by hand)
        with pytest.raises(DatasetNotFoundError, match=r"download=True needs \S+DvsGesture.tar.gz"):
            case.make(root, download=True).setup()
        shutil.copytree(served, root)
    with pytest.raises(DatasetNotFoundError):
        case.make(tmp_path / "off").setup()  # download=False never fetches
    dm = case.make(root, download=True)
    dm.setup()
    assert len(dm.train_set) == case.n_train
    assert len(fetched) == (len(case.archives) if case.downloadable else 0)
    assert not list(root.glob(".*partial*"))  # no staging folder left


@pytest.mark.parametrize("name", list(CASES))
def test_an_archive_with_another_checksum_is_refused_before_extraction(name, data_roots, tmp_path):
    case = CASES[name]
    root = tmp_path / "root"
    shutil.copytree(data_roots["archives"] / case.fixture, root)  # the fixture's MD5 is not the published one
    with pytest.raises(DataFileError, match=rf"{case.archives[0]}: its MD5 is [0-9a-f]+, the published one is") as info:
        case.make(root, download=True).prepare_data()
    assert "\n" not in str(info.value)
    assert not (root / "extract").exists() and not (root / "cifar-10-batches-py").exists()


@pytest.mark.parametrize("kind", ["dotdot", "nested_dotdot", "absolute", "link_out"])
@pytest.mark.parametrize("name", list(CASES))
def test_a_hostile_archive_is_refused_and_nothing_leaves_root(name, kind, data_roots, fixtures_module, tmp_path,
                                                               monkeypatch):
    """Path traversal, an absolute name, a link pointing out: one line naming the archive, nothing written outside
    root (or inside it under the hostile name), no partial folder left."""
    case = CASES[name]
    root = tmp_path / "a" / "root"  # ../escaped.txt and sub/../../escaped.txt land in a/ and tmp_path if written
    shutil.copytree(data_roots["archives"] / case.fixture, root)
    archive, folder, arcname = case.hostile
    source = data_roots[folder.split("/")[0]].joinpath(*folder.split("/")[1:]) if folder != "shd_train_only" else None
    if source is None:  # one HDF5 file at the top of the zip, as the Zenke lab ships it
        source = tmp_path / "only"
        source.mkdir()
        shutil.copy(data_roots["shd"] / "shd_train.h5", source)
    absolute = tmp_path / "abs_escaped.txt"
    (root / archive).unlink()
    fixtures_module.hostile_archive(root / archive, source, arcname, kind, absolute=str(absolute))
    _publish(monkeypatch, name, root)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DataFileError, match=rf"cannot read {root / archive}: not extracted \(\w+") as info:
        case.make(root, download=True).prepare_data()
    assert "\n" not in str(info.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert not absolute.exists() and not (tmp_path / "escaped.txt").exists()


#: the first URL an offline download=True tries, as its one-line error names it
OFFLINE = {
    "cifar10": (CASES["cifar10"].make,
                r"CIFAR-10: download of https://www.cs.toronto.edu/\S+ into \S+ failed \(URLError: <urlopen error \[Errno -3\]"),
    "cifar10_dvs": (make_cifar10_dvs, rf"download of {re.escape(dvs_reader.ARCHIVES[0][1])} into \S+ failed \(URLError"),
    "shd": (make_shd, rf"download of {re.escape(shd_reader.ARCHIVES[0][1])} into \S+ failed \(URLError"),
    "speech_commands": (lambda root, **k: SpeechCommandsDataModule(root=root, **k),
                        rf"download of {re.escape(speech_reader.ARCHIVE_URL.format(version='v0.02'))} failed \(URLError"),
}


@pytest.mark.parametrize("name", list(OFFLINE))
def test_an_offline_download_is_one_line_naming_the_url(name, tmp_path, monkeypatch):
    make, message = OFFLINE[name]

    def offline(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(DatasetNotFoundError, match=message) as info:
        make(tmp_path, download=True).prepare_data()
    assert "\n" not in str(info.value)
