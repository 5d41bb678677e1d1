"""Reading files that come from elsewhere without trusting them: pickles of arrays, tar archives, checksums.

* :func:`load_arrays_pickle`: a pickle that may hold numpy arrays, numbers, strings, lists and dicts, and
  nothing that runs code (the CIFAR batches, MNIST's ``mnist.pkl.gz``). ``pickle.load`` would call whatever a
  ``__reduce__`` names; the unpickler here refuses every global but numpy's array reconstruction.
* :func:`extract_archives` (:func:`extract_tar`): extract tar or zip archives so that nothing lands outside the
  destination (Python's ``"data"`` filter, PEP 706: no ``..``, no absolute paths, links or device files that
  leave it; the same checks for zip members), into a temporary folder renamed into place only when complete.
* :func:`fetch_archive`, :func:`check_digest`: download an archive (or take the one already there) and compare
  it with its published checksum (SHA-256, else the authors' MD5) before it is used.

Every archive a DataModule reads (Speech Commands, CIFAR-10/100, CIFAR10-DVS, DVS128 Gesture, SHD) goes through
these; none is handed to torchvision's or spikingjelly's extraction, which has no filter.

(Kept here rather than in a library: torchvision/torchaudio extract without a filter and read CIFAR with
``pickle.load``.)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import IO, Any, Optional, Sequence

from datamodules.base import DataFileError, DatasetNotFoundError

__all__ = ["ArraysOnlyUnpickler", "load_arrays_pickle", "extract_tar", "extract_archives", "fetch_archive",
           "check_digest", "check_sha256", "file_digest", "sha256_of"]


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Accept numpy arrays, numpy scalars and plain Python data; refuse every other global (no code runs)."""

    ALLOWED = {(numpy_core, name) for numpy_core in ("numpy.core.multiarray", "numpy._core.multiarray")
               for name in ("_reconstruct", "scalar")} | {
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol-5 arrays
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes (data, not code)
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}; only numpy arrays and plain data are "
                                         "allowed (a data file must not run code)")
        return super().find_class(module, name)


def load_arrays_pickle(file: IO[bytes], encoding: str = "latin1") -> Any:
    """``pickle.load(file, encoding=...)`` through :class:`ArraysOnlyUnpickler` (raises ``UnpicklingError``)."""
    return ArraysOnlyUnpickler(file, encoding=encoding).load()


def file_digest(path: str | Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """The hex digest (``sha256``, ``md5``) of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    return file_digest(path, "sha256", chunk)


def check_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`DataFileError` naming ``path`` unless its SHA-256 is ``expected``."""
    check_digest(path, expected, "sha256")


def check_digest(path: str | Path, expected: str, algorithm: str = "sha256") -> None:
    """Raise :class:`DataFileError` naming ``path`` unless its ``algorithm`` digest is ``expected`` (the published
    checksum: SHA-256 where one is published, else the MD5 the dataset's authors give)."""
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        name = {"sha256": "SHA-256", "md5": "MD5"}.get(algorithm, algorithm)
        raise DataFileError(path, f"its {name} is {actual}, the published one is {expected}",
                            "Delete it (a partial or altered download) and run again.")


def fetch_archive(url: Optional[str], path: str | Path, md5: Optional[str] = None, sha256: Optional[str] = None,
                  how: str = "", name: str = "") -> Path:
    """``path`` with its published checksum checked: downloaded from ``url`` first if it is not there (into a
    temporary file renamed when complete). ``url=None``: a manual download (``how`` says where from); ``name``
    (the dataset) starts the message of a failed download. Raises
    :class:`DataFileError` naming the file (wrong checksum) or ``DatasetNotFoundError`` naming the URL (offline)."""
    path = Path(path)
    if not path.is_file():
        if url is None:
            raise DatasetNotFoundError(f"{path} not found; it cannot be downloaded automatically: {how}", path.parent)
        from torch.hub import download_url_to_file  # a temporary file beside it, renamed when complete

        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            download_url_to_file(url, str(path), hash_prefix=sha256, progress=True)
        except OSError as exc:  # offline (URLError), refused, disk full: one line naming the URL
            raise DatasetNotFoundError(f"{name + ': ' if name else ''}download of {url} into {path.parent} failed ({type(exc).__name__}: "
                                       f"{' '.join(str(exc).split())}); retry online, or fetch it yourself into "
                                       f"{path.parent}", path.parent) from exc
        except RuntimeError as exc:  # torch.hub: "invalid hash value"
            raise DataFileError(url, f"the download does not have the published SHA-256 {sha256}",
                                "Retry; if it persists the file on the server changed.") from exc
    if sha256 is not None:
        check_digest(path, sha256, "sha256")
    elif md5 is not None:
        check_digest(path, md5, "md5")
    return path


def extract_tar(archive: str | Path, destination: str | Path) -> None:
    """Extract ``archive`` into ``destination`` (which must not exist yet), refusing any member that would land
    outside it; a failure leaves neither ``destination`` nor a partial extraction behind."""
    extract_archives([archive], destination)


def extract_archives(archives: Sequence[str | Path], destination: str | Path, inner: Optional[str] = None) -> None:
    """Extract every one of ``archives`` (tar, any compression, or zip) into ``destination``, which must not exist
    yet: staged in a temporary folder beside it and renamed into place only when every archive is complete, so a
    failure leaves no partial ``destination``. A member whose name is absolute or leaves the folder (``..``), a
    link pointing out of it, a device file: refused, the archive named (:class:`DataFileError`), nothing written
    outside. ``inner``: the archive's top folder (e.g. ``cifar-10-batches-py``) becomes ``destination``."""
    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} exists already; delete it (an incomplete extraction?) and run again")
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        for archive in archives:
            _extract_one(Path(archive), staging)
        result = staging / inner if inner else staging
        if inner and not result.is_dir():
            raise DataFileError(archives[0], f"has no folder {inner}/", "Delete it and download it again.")
        os.replace(result, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_one(archive: Path, into: Path) -> None:
    """Extract one tar or zip archive into the existing folder ``into`` (member checks as in :func:`extract_archives`)."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    _check_zip_member(info)
                    zf.extract(info, into)
            return
        with tarfile.open(archive) as tar:
            for member in tar:
                tar.extract(member, into, filter=_member_inside)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, tarfile.TarError) and exc.filename is not None:
            raise  # (disk full, permissions: about the destination, not the archive)
        raise DataFileError(archive, f"not extracted ({type(exc).__name__}: {exc})",
                            "Delete it and download it again.") from exc


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    """Refuse a zip member that is absolute, leaves the folder, or is a link (``zipfile`` would only rewrite the
    name silently, and write a link as a file holding its target)."""
    name = info.filename
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or os.path.isabs(name) or (len(parts[0]) == 2 and parts[0][1] == ":"):
        raise tarfile.AbsolutePathError(tarfile.TarInfo(name))
    if ".." in parts:
        raise RefusedMember(f"member {name!r} would be extracted outside the destination")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise RefusedMember(f"member {name!r} is a symbolic link (never extracted from a zip)")


class RefusedMember(tarfile.TarError):
    """A zip member that :func:`extract_archives` refuses (tar members: ``tarfile``'s filter errors)."""


def _member_inside(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """Python's ``data`` filter, and no absolute names at all (the filter would only strip the leading ``/``)."""
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, path)
