"""Checkpoints written beside their final name and renamed into place: a full disk never leaves a truncated file.

Lightning's ``TorchCheckpointIO`` writes a local checkpoint through an fsspec transaction: into a temporary file
in the system's temporary folder, then ``shutil.move`` to the checkpoint's name. When that folder is on another
filesystem the move is a copy, and a copy that runs out of space leaves a truncated checkpoint under its real name
(measured: 90 of ~124 KB, then a raw ``OSError``). :class:`AtomicCheckpointIO` writes the file next to its name
(:func:`bso_lightning.atomic.atomic_file`: same filesystem, flushed, then ``os.replace``), so the name holds the
previous complete checkpoint or the new complete one. ``bso-lightning`` uses it; in Python pass
``L.Trainer(plugins=[AtomicCheckpointIO()])``. Remote paths (``s3://``, ...) are left to Lightning.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

from bso_lightning.atomic import atomic_file


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic on the checkpoint's own filesystem."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        text = str(path)
        if storage_options is not None or ("://" in text and not text.startswith("file://")):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_file(text.removeprefix("file://")) as tmp:
            torch.save(checkpoint, tmp)


__all__ = ["AtomicCheckpointIO"]
