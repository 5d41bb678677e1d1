"""CIFAR10-DVS as event frames (reader: :mod:`datamodules.datasets.cifar10_dvs`; cache: :mod:`datamodules.event_frames`).

Cache under ``root/bso_cache/frames_T{T}_{split_by}_{S}px/`` (frames.npy, labels.npy, files.json, split_*.json).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from datamodules.base import check_at_least
from datamodules.datasets import cifar10_dvs as reader
from datamodules.datasets.splits import first_per_class, seeded_per_class
from datamodules.event_frames import CameraEventFrameDataModule

CLASS_NAMES = reader.CLASS_NAMES
SPLITS = ("seeded", "first_per_class")


class CIFAR10DVSDataModule(CameraEventFrameDataModule):
    """CIFAR10-DVS as ``x: [B, T, 2, S, S]`` event frames (one per time step), 10 classes.

    Events (spikingjelly's reader and integrator) are split into ``time_steps`` frames
    (``split_by``), resized from 128x128 to ``image_size``, and cached once under
    ``root/bso_cache`` (a progress bar shows while frames are built; later runs only read the
    cache). Per class, ``train_per_class`` samples (paper: 900 of 1000) train and the rest (100)
    form the test set, which is also the validation set. ``split``:

    * ``"seeded"`` (default): a class-balanced random choice seeded by ``seed``;
    * ``"first_per_class"``: the authors' split, the first ``train_per_class`` files of each class in
      file-name order (spikingjelly's ``split_to_train_test_set`` over its ``DatasetFolder``).

    The split and the training set's per-polarity mean/std are cached too, so every run and
    machine gets the same split. Training adds a random crop (``crop_padding`` zero-event pixels
    of padding, then back to ``image_size``) and a horizontal flip; frames are normalized with the
    training mean/std when ``normalize`` is on.

    ``download=True`` fetches the 10 class archives into ``root/download`` (MD5 checked) and extracts them into
    ``root/extract`` with no member allowed outside it, then converts them.

    An unreadable or malformed event file stops ``prepare_data``/``setup`` with a
    :class:`~datamodules.base.DataFileError` naming the file (nothing is cached then).
    """

    name = "CIFAR10-DVS"
    num_classes = 10
    in_channels = 2
    reader = reader

    def __init__(
        self,
        root: str | Path = "data/cifar10_dvs",
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        download: bool = False,
        time_steps: int = 10,
        image_size: int = 48,
        split_by: Literal["number", "time"] = "number",
        train_per_class: int = 900,
        split: Literal["seeded", "first_per_class"] = "seeded",
        crop_padding: int = 4,
        horizontal_flip: bool = True,
        normalize: bool = True,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, seed, download, time_steps, normalize)
        check_at_least("train_per_class", train_per_class, 1)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self._set_camera_options(image_size, split_by, crop_padding, horizontal_flip)
        self.train_per_class = train_per_class
        self.split = split

    def _split_name(self) -> str:
        if self.split == "seeded":
            return f"seeded_seed{self.seed}_train{self.train_per_class}"
        return f"first_per_class_train{self.train_per_class}"

    def _split(self, files, labels, subsets):
        if self.split == "seeded":
            return seeded_per_class(labels, self.train_per_class, self.seed)
        return first_per_class(labels, files, self.train_per_class)

    def _list_samples(self):
        reader.find_or_make_events(self.root, self.download)
        listing = reader.list_event_files(self.events_root)
        counts = np.bincount([label for _, label in listing], minlength=self.num_classes)
        short = [f"{cls}: {counts[i]}" for i, cls in enumerate(CLASS_NAMES) if counts[i] <= self.train_per_class]
        if short:
            raise reader.not_found(
                self.root,
                f"{self.events_root} needs more than train_per_class={self.train_per_class} .npz files "
                f"in every class folder; too few in {', '.join(short)}. If {self.events_root} was made from an "
                f"incomplete extract/ or download/, delete it (and the incomplete folder) and run again"
            )
        return [rel for rel, _ in listing], [label for _, label in listing], None
