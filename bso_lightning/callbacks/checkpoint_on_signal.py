"""Leave a resumable checkpoint when training is stopped by SIGTERM or Ctrl+C.

Lightning already turns SIGTERM into a clean stop: its handler sets ``trainer.received_sigterm`` and the
training loop raises ``SIGTERMException`` at the end of the current batch (on every DDP process at the
same batch). It does not save anything then; :class:`CheckpointOnInterrupt` does, in ``on_exception``.
The process then exits with status 143 (128 + SIGTERM) rather than Lightning's 0.
Ctrl+C (SIGINT) is handled the same way in single-process training: the first one stops training at the
end of the current batch and saves; a second one interrupts at once (without a checkpoint, since the
batch is half done: resume from the last periodic checkpoint then).

The checkpoint holds the data loader's position (``datamodules.sampling.ResumableDataLoader``), so
``fit(ckpt_path=...)`` continues exactly where the run stopped, mid-epoch included.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any, Optional

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

log = logging.getLogger(__name__)


class CheckpointOnInterrupt(Callback):
    """Save ``<dirpath>/<filename>.ckpt`` when ``fit`` stops on SIGTERM or Ctrl+C at a batch boundary.

    Args:
        dirpath: folder of the checkpoint; default: the ``ModelCheckpoint`` folder (e.g.
            ``lightning_logs/version_N/checkpoints``), else ``<default_root_dir>/checkpoints``.
        filename: file name without ``.ckpt``.
        defer_sigint: in single-process training, turn the first Ctrl+C into a stop at the end of the
            current batch (as Lightning does for SIGTERM). Under DDP, send SIGTERM to stop cleanly.

    Other exceptions save nothing: the state they leave behind may be half updated.
    """

    def __init__(self, dirpath: Optional[str] = None, filename: str = "interrupted", defer_sigint: bool = True) -> None:
        if not filename:
            raise ValueError("filename must be a non-empty string")
        self.dirpath = dirpath
        self.filename = filename
        self.defer_sigint = defer_sigint
        self.saved_path: Optional[str] = None
        self._sigint_requested = False
        self._previous_sigint: Any = None

    # ----------------------------------------------------------------- where
    def checkpoint_path(self, trainer: L.Trainer) -> str:
        dirpath = self.dirpath
        if dirpath is None:
            callback = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
            dirpath = callback.dirpath if callback is not None and callback.dirpath else None
        if dirpath is None:
            dirpath = os.path.join(trainer.default_root_dir, "checkpoints")
        return os.path.join(str(dirpath), self.filename + ".ckpt")

    # ----------------------------------------------------------------- Ctrl+C
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._sigint_requested = False
        if self.defer_sigint and trainer.world_size == 1 and threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self._sigint_requested:  # second Ctrl+C: stop now
            self._restore_sigint()
            raise KeyboardInterrupt
        self._sigint_requested = True
        log.warning("Ctrl+C: stopping at the end of this batch and saving a checkpoint (Ctrl+C again to abort now)")

    def _restore_sigint(self) -> None:
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)
            self._previous_sigint = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._sigint_requested:
            self._sigint_requested = False
            raise KeyboardInterrupt

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    # ----------------------------------------------------------------- save
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()
        if isinstance(exception, SIGTERMException) and exception.code is None:
            # Lightning's SIGTERMException is a SystemExit with status 0; exit like a process killed by
            # SIGTERM instead (143), so that a scheduler or script does not take the run for finished
            exception.code = 128 + signal.SIGTERM
        interrupted = isinstance(exception, SIGTERMException) or (
            isinstance(exception, KeyboardInterrupt) and trainer.world_size == 1)
        if not interrupted or trainer.state.fn != TrainerFn.FITTING or trainer.global_step == 0:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if progress.ready != progress.processed:  # a batch was fetched but its steps did not all run
            log.warning("Interrupted in the middle of a batch: no checkpoint saved (the batch is half applied); "
                        "resume from the last periodic checkpoint")
            return
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)
        self.saved_path = path
        log.warning("Training interrupted (%s): saved %s; resume with `fit(ckpt_path=...)` / `--ckpt_path %s`",
                    type(exception).__name__, path, path)
