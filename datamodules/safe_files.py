"""Reading files that come from elsewhere without trusting them: pickles of arrays, tar archives, checksums.

* :func:`load_arrays_pickle`: a pickle that may hold numpy arrays, numbers, strings, lists and dicts, and
  nothing that runs code (the CIFAR batches, MNIST's ``mnist.pkl.gz``). ``pickle.load`` would call whatever a
  ``__reduce__`` names; the unpickler here refuses every global but numpy's array reconstruction.
* :func:`extract_tar`: extract an archive so that nothing lands outside the destination (Python's ``"data"``
  filter, PEP 706: no ``..``, no absolute paths, links or device files that leave it), into a temporary folder
  renamed into place only when complete.
* :func:`check_sha256`: compare a file with its published SHA-256 before it is used.

(Kept here rather than in a library: torchvision/torchaudio extract without a filter and read CIFAR with
``pickle.load``.)
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any

from datamodules.base import DataFileError

__all__ = ["ArraysOnlyUnpickler", "load_arrays_pickle", "extract_tar", "check_sha256", "sha256_of"]


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


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: str | Path, expected: str) -> None:
    """Raise :class:`DataFileError` naming ``path`` unless its SHA-256 is ``expected``."""
    actual = sha256_of(path)
    if actual != expected.lower():
        raise DataFileError(path, f"its SHA-256 is {actual}, the published one is {expected}",
                            "Delete it (a partial or altered download) and run again.")


def extract_tar(archive: str | Path, destination: str | Path) -> None:
    """Extract ``archive`` into ``destination`` (which must not exist yet), refusing any member that would land
    outside it; a failure leaves neither ``destination`` nor a partial extraction behind."""
    archive, destination = Path(archive), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.partial-", dir=destination.parent))
    try:
        with tarfile.open(archive) as tar:
            for member in tar:
                tar.extract(member, staging, filter=_member_inside)
        os.replace(staging, destination)
    except (tarfile.TarError, EOFError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) and not isinstance(exc, tarfile.TarError) and exc.filename is not None:
            raise  # (disk full, permissions: about the destination, not the archive)
        raise DataFileError(archive, f"not extracted ({type(exc).__name__}: {exc})",
                            "Delete it and download it again.") from exc


def _member_inside(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo:
    """Python's ``data`` filter, and no absolute names at all (the filter would only strip the leading ``/``)."""
    if member.name.startswith(("/", "\\")) or os.path.isabs(member.name):
        raise tarfile.AbsolutePathError(member)
    return tarfile.data_filter(member, path)
