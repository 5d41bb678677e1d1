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
    """Yield a temporary path beside ``target``; replace ``target`` with it when the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
