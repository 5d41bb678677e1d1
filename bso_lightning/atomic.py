"""Build a file or a folder under a temporary name, then rename it into place (the one place this is written).

A reader never sees a half-written cache or export: the target either does not exist or is complete.
Used by the dataset caches (``datamodules``), the packed export and the NIR export.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional, Union

PathLike = Union[str, os.PathLike]


@contextmanager
def atomic_directory(target: PathLike, complete_marker: Optional[str] = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; rename it to ``target`` when the block succeeds.

    On an exception the temporary folder is deleted and ``target`` is untouched. If another process
    finished ``target`` first (the rename fails and ``target`` holds ``complete_marker``, or any
    ``target`` when no marker is given), its folder is kept and ours is deleted.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.rename(tmp, target)
        except OSError:
            finished = target.is_dir() and (complete_marker is None or (target / complete_marker).exists())
            if not finished:
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextmanager
def atomic_file(target: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (same filesystem); when the block succeeds, flush it to disk and
    replace ``target`` with it. On any failure (a full disk included) ``target`` is left as it was and the
    temporary file is deleted. The file gets the usual mode (0666 minus the umask), not ``mkstemp``'s 0600."""
    target = Path(target)
    if target.is_dir():
        raise IsADirectoryError(f"{target} is a folder; give a file name")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename: a crash leaves the old file or the new one
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def refuse_overwriting(source: PathLike, out: PathLike) -> None:
    """Raise ``ValueError`` if writing ``out`` would replace ``source`` (the same file, by any path or link) or
    ``out`` is a folder: an export must never destroy its input."""
    source, out = Path(source), Path(out)
    if out.is_dir():
        raise ValueError(f"output {out} is a folder; give a file name")
    same = out.exists() and source.exists() and os.path.samefile(source, out)
    if same or out.resolve() == source.resolve():
        raise ValueError(f"output {out} is the input {source}: writing it would destroy the input; give another "
                         "file name")


def _umask() -> int:
    """The process's umask (read from /proc where possible: setting it to read it is not thread-safe)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
