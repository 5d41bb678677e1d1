"""Google Speech Commands (v0.02 or v0.01, or any word subset in that layout) as 32x32 log-Mel images.

Reader and cache builder: :mod:`datamodules.datasets.speech_commands`. Features are computed once per
split and cached under ``root/SpeechCommands/bso_cache/<settings>/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import TensorDataset

from datamodules.base import BaseDataModule, check_at_least, dataset_not_found, file_stamp
from datamodules.datasets import speech_commands as reader
from datamodules.datasets.speech_commands import (CLASSES_12, KEYWORDS, SUBSETS, VERSION_WORDS, WORDS, WORDS_V1,
                                                  read_wav)

__all__ = ["SpeechCommandsDataModule", "CLASSES_12", "KEYWORDS", "WORDS", "WORDS_V1", "read_wav"]

log = logging.getLogger(__name__)

CLASS_SETS = ("35words", "30words", "12class", "words")
ARCHIVE_URL, ARCHIVE_SHA256 = reader.ARCHIVE_URL, reader.ARCHIVE_SHA256  # (the same objects)


class SpeechCommandsDataModule(BaseDataModule):
    """Google Speech Commands keyword spotting, ``x: [B, 1, S, S]`` in [-1, 1].

    ``version`` (``"v0.02"``: 35 words; ``"v0.01"``: 30) picks the folder
    ``root/SpeechCommands/speech_commands_<version>``; ``words`` restricts it to those word folders (any
    subset in that layout; default: every word the class set needs, or every folder found).

    ``class_set``:

    * ``"35words"`` / ``"30words"``: the 35 words of v0.02 / the 30 of v0.01, labels in alphabetical order;
    * ``"12class"``: 10 keywords + ``_unknown_`` (the other available words) + ``_silence_`` (1 s cuts of
      ``_background_noise_``), labels in :data:`CLASSES_12` order; as in TensorFlow's reference, each split
      holds every keyword clip plus ``unknown_percentage`` % and ``silence_percentage`` % of that count as
      unknown (a seeded sample) and silence (seeded cuts; training from the first 80 % of each noise file,
      validation the next 10 %, test the last 10 %);
    * ``"words"``: one class per entry of ``words`` (required; labels in that order). In YAML quote
      ``"yes"``, ``"no"``, ``"on"``, ``"off"`` (unquoted they are booleans).

    Default (``None``): ``"words"`` when ``words`` is given, else ``"35words"``.

    ``download=True`` fetches ``speech_commands_<version>.tar.gz`` into ``root`` (or uses the one already there),
    checks its published SHA-256 and extracts it with no member allowed outside the dataset folder
    (:func:`datamodules.safe_files.extract_tar`).

    A class set whose words are absent is refused with an error naming them. Each clip is padded/trimmed to
    1 s at 16 kHz, turned into a Mel-spectrogram (``n_mels`` bands, ``n_fft``-point windows every
    ``hop_length`` samples), log-scaled (dB relative to the clip's peak, 80 dB range, mapped to [0, 1]),
    resized to ``image_size`` and normalized with mean 0.5, std 0.5. Splits are the official ones
    (``validation_list.txt``, ``testing_list.txt``, the rest trains). Unreadable, empty or missing WAVs are
    skipped and counted, with a logged warning that names them; ``skipped_files`` lists them after ``setup``.
    """

    in_channels = 1

    def __init__(
        self,
        root: str | Path = "data/speech_commands",
        batch_size: int = 128,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
        download: bool = False,
        version: Literal["v0.02", "v0.01"] = "v0.02",
        class_set: Optional[Literal["35words", "30words", "12class", "words"]] = None,
        words: Optional[Sequence[str]] = None,
        image_size: int = 32,
        n_mels: int = 40,
        n_fft: int = 480,
        hop_length: int = 160,
        silence_percentage: float = 10.0,
        unknown_percentage: float = 10.0,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, seed)
        if class_set is None:  # a word list alone means: those words are the classes
            class_set = "words" if words is not None else "35words"
        if version not in VERSION_WORDS:
            raise ValueError(f"version must be one of {tuple(VERSION_WORDS)}, got {version!r}")
        if class_set not in CLASS_SETS:
            raise ValueError(f"class_set must be one of {CLASS_SETS}, got {class_set!r}")
        if words is not None:
            words = [str(w) for w in words]
            bad = [w for w in words if not w or "/" in w or w.startswith("_")]
            if not words or bad or len(set(words)) != len(words):
                raise ValueError(f"words must be distinct, non-empty word folder names, got {words!r}")
        if class_set == "words" and words is None:
            raise ValueError("class_set='words' needs words=[...] (the classes, in label order)")
        check_at_least("image_size", image_size, 1)
        if n_mels < 1 or n_fft < 2 or hop_length < 1:
            raise ValueError(f"need n_mels >= 1, n_fft >= 2, hop_length >= 1; got {n_mels}, {n_fft}, {hop_length}")
        for name, value in (("silence_percentage", silence_percentage), ("unknown_percentage", unknown_percentage)):
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} must lie in [0, 100], got {value}")
        self.download = download
        self.version = version
        self.class_set = class_set
        self.words = list(words) if words is not None else None
        self.image_size = image_size
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.silence_percentage = silence_percentage
        self.unknown_percentage = unknown_percentage
        self.skipped_files: list[str] = []
        self._required = self._required_words()
        classes = {"35words": WORDS, "30words": WORDS_V1, "12class": CLASSES_12}
        self.classes: tuple[str, ...] = tuple(self.words) if class_set == "words" else classes[class_set]  # type: ignore[arg-type]
        if self.words is not None:
            self._refuse_missing([w for w in self._required if w not in self.words], f"words={self.words}")
        self.num_classes = len(self.classes)

    # -------------------------------------------------------------------------------- words
    def _required_words(self) -> tuple[str, ...]:
        return {"35words": WORDS, "30words": WORDS_V1, "12class": KEYWORDS, "words": tuple(self.words or ())}[self.class_set]

    def _refuse_missing(self, missing: list[str], where: str) -> None:
        if missing:
            hint = " (v0.01 has 30 words: use class_set='30words')" if self.class_set == "35words" else ""
            raise ValueError(f"class_set={self.class_set!r} needs the words {', '.join(missing)}, which {where} "
                             f"does not have{hint}; or pick class_set='words' with words=[...]")

    def _selected_words(self) -> list[str]:
        """The word folders read: ``words``, else every folder found (the class set's words must be among them)."""
        present = reader.word_folders(self.data_dir)
        if self.words is not None:
            absent = [w for w in self.words if w not in present]
            if absent:
                raise dataset_not_found(f"Speech Commands {self.version}", self.data_dir, "a folder per word of "
                                        f"words={self.words}", self._how(), problem=f"no word folders {', '.join(absent)}")
            return list(self.words)
        self._refuse_missing([w for w in self._required if w not in present], str(self.data_dir))
        return list(self._required) if self.class_set in ("35words", "30words") else present

    # -------------------------------------------------------------------------------- paths
    @property
    def data_dir(self) -> Path:
        return self.root / reader.FOLDER_IN_ARCHIVE / f"speech_commands_{self.version}"

    @property
    def cache_dir(self) -> Path:
        name = f"{self.version}_{self.class_set}_{self.image_size}px_mel{self.n_mels}_fft{self.n_fft}_hop{self.hop_length}"
        if self.words is not None:
            name += "_words" + hashlib.sha1("\n".join(self.words).encode()).hexdigest()[:10]
        if self.class_set == "12class":
            name += f"_sil{self.silence_percentage:g}_unk{self.unknown_percentage:g}_seed{self.seed}"
        return self.root / reader.FOLDER_IN_ARCHIVE / "bso_cache" / name

    # ---------------------------------------------------------------------------- preparing
    def _how(self) -> str:
        return (f"pass download=True (downloads speech_commands_{self.version}.tar.gz, "
                f"{reader.ARCHIVE_SIZE[self.version]}, from http://download.tensorflow.org/data/ and extracts it), or "
                f"extract that archive (or your own word folders in its layout) into {self.data_dir}")

    def _check_folder(self) -> None:
        expected = ("validation_list.txt, testing_list.txt, one folder of .wav files per word ("
                    + ", ".join(self.words or self._required or ("any",)) + ")"
                    + (" and _background_noise_/*.wav" if self.class_set == "12class" else ""))
        problems = []
        if self.data_dir.is_dir():
            problems += [f"no {n}" for n in ("validation_list.txt", "testing_list.txt") if not (self.data_dir / n).is_file()]
            wanted = self.words or self._required
            missing = [w for w in wanted if not (self.data_dir / w).is_dir()]
            if missing:
                needed = f"words={self.words}" if self.words else f"class_set={self.class_set!r}"
                hint = ("; for v0.01 or another subset use class_set='30words', or 'words' with words=[...]"
                        if self.class_set == "35words" else "")
                problems.append(f"no word folders {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                                f"(needed by {needed}{hint})")
            elif not wanted and not reader.word_folders(self.data_dir):
                problems.append("no word folders")
            if self.class_set == "12class" and not reader.noise_files(self.data_dir):
                problems.append(f"no {reader.NOISE_DIR}/*.wav (needed for the silence class)")
        if not self.data_dir.is_dir() or problems:
            raise dataset_not_found(f"Speech Commands {self.version}", self.data_dir, expected, self._how(),
                                    problem="; ".join(problems) or None)

    def _selections(self, listing, words: list[str]):
        """``subset -> (files with labels, silence count)`` and the seeded generators that made them."""
        rngs = {s: np.random.Generator(np.random.PCG64([self.seed, SUBSETS.index(s)])) for s in SUBSETS}
        if self.class_set == "12class":
            return {s: reader.select_12class(listing[s], self.unknown_percentage, self.silence_percentage, rngs[s])
                    for s in SUBSETS}, rngs
        index = {w: i for i, w in enumerate(self.classes)}
        return {s: ([(rel, index[w]) for rel, w in listing[s] if w in index], 0) for s in SUBSETS}, rngs

    def prepare_data(self) -> None:
        if self.download and not self.data_dir.is_dir():
            reader.download_and_extract(self.root, self.version, self.data_dir, self._how())
        self._check_folder()
        words = self._selected_words()
        listing = reader.list_subsets(self.root, self.version, words)
        h = hashlib.sha1()  # names, sizes and modification times: a file replaced or edited rebuilds the cache
        for subset in SUBSETS:
            h.update("\n".join(f"{rel} {file_stamp(self.data_dir / rel)}" for rel, _ in listing[subset]).encode())
        if self.class_set == "12class":
            h.update("\n".join(f"{name} {file_stamp(self.data_dir / reader.NOISE_DIR / name)}"
                               for name in reader.noise_files(self.data_dir)).encode())
        fingerprint = h.hexdigest()
        meta_file = self.cache_dir / "meta.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if meta.get("version") == reader.CACHE_VERSION and meta.get("fingerprint") == fingerprint:
                return
            log.warning("Speech Commands: the cache %s does not match %s; rebuilding it", self.cache_dir, self.data_dir)
            shutil.rmtree(self.cache_dir)
        import torchaudio

        mel = torchaudio.transforms.MelSpectrogram(sample_rate=reader.SAMPLE_RATE, n_fft=self.n_fft,
                                                   hop_length=self.hop_length, n_mels=self.n_mels)
        selections, rngs = self._selections(listing, words)
        reader.build_feature_cache(self.cache_dir, self.data_dir, selections, rngs,
                                   lambda waves: reader.log_mel_images(waves, mel, self.image_size),
                                   {"fingerprint": fingerprint, "classes": list(self.classes)})

    # ------------------------------------------------------------------------------ loading
    def _load(self, subset: str) -> TensorDataset:
        with np.load(self.cache_dir / f"{subset}.npz") as npz:
            x = torch.from_numpy(npz["features"].astype(np.float32))
            y = torch.from_numpy(npz["labels"])
        return TensorDataset((x - 0.5) / 0.5, y)

    def setup(self, stage: Optional[str] = None) -> None:
        if self.train_set is not None:
            return
        self.prepare_data()  # cheap when the cache exists; builds it when prepare_data was not called
        meta = json.loads((self.cache_dir / "meta.json").read_text())
        self.skipped_files = list(meta["skipped"])
        if self.skipped_files:
            shown = "\n  ".join(self.skipped_files[:20])
            more = (f"\n  ... and {len(self.skipped_files) - 20} more (all listed in {self.cache_dir / 'meta.json'})"
                    if len(self.skipped_files) > 20 else "")
            log.warning("Speech Commands: skipped %d unreadable audio file(s):\n  %s%s", len(self.skipped_files), shown, more)
        self.train_set = self._load("training")
        self.val_set = self._load("validation")
        self.test_set = self._load("testing")
