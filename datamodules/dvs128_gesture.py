"""DVS128 Gesture as event frames, official split (reader: :mod:`datamodules.datasets.dvs128_gesture`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from datamodules.base import dataset_not_found
from datamodules.datasets import dvs128_gesture as reader
from datamodules.event_frames import CameraEventFrameDataModule


class DVS128GestureDataModule(CameraEventFrameDataModule):
    """DVS128 Gesture (11 gestures, 29 users): ``x: [B, T, 2, S, S]`` event frames, the official split.

    Each gesture's events (spikingjelly splits the recordings by their ``_labels.csv``) are integrated
    into ``time_steps`` frames (``split_by``, spikingjelly's integrator) at 128x128, resized to
    ``image_size`` and cached once under ``root/bso_cache``. Train/test are the official
    ``trials_to_train.txt`` / ``trials_to_test.txt`` (users 1-23 / 24-29); the test set is also the
    validation set. Training adds a random crop (``crop_padding``); a horizontal flip is off by default
    because it turns a left-hand gesture into a right-hand one. Frames are normalized per polarity with
    the training mean/std when ``normalize`` is on. ``download=True`` extracts ``root/download/DvsGesture.tar.gz``
    (downloaded by hand) after an MD5 check, with no member allowed outside ``root/extract``.
    """

    name = "DVS128 Gesture"
    num_classes = len(reader.CLASS_NAMES)
    in_channels = 2
    reader = reader

    def __init__(
        self,
        root: str | Path = "data/dvs128_gesture",
        batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        download: bool = False,
        time_steps: int = 16,
        image_size: int = 64,
        split_by: Literal["number", "time"] = "number",
        crop_padding: int = 4,
        horizontal_flip: bool = False,
        normalize: bool = True,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, seed, download, time_steps, normalize)
        self._set_camera_options(image_size, split_by, crop_padding, horizontal_flip)

    def _list_samples(self):
        reader.find_or_make_events(self.root, self.download)
        listing = reader.list_event_files(self.events_root)
        present = {(s, label) for _, label, s in listing}
        empty = [f"{s}/{label}" for s in reader.SUBSETS for label in range(self.num_classes) if (s, label) not in present]
        if empty:
            raise dataset_not_found("DVS128 Gesture", self.root, reader.EXPECTED, reader.HOW,
                                    problem=f"no .npz gestures in {self.events_root}/{{{', '.join(empty[:5])}"
                                            f"{', ...' if len(empty) > 5 else ''}}}: an interrupted conversion? Delete "
                                            f"{self.events_root} and run again")
        subsets = [s for _, _, s in listing]
        return [f for f, _, _ in listing], [label for _, label, _ in listing], subsets
