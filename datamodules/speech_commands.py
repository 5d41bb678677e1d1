"""Google Speech Commands v0.02 as 32x32 log-Mel images, read with soundfile (no FFmpeg needed).

Files are listed with torchaudio's ``SPEECHCOMMANDS`` (which also downloads the archive and applies
the official ``validation_list.txt`` / ``testing_list.txt`` split); WAVs are decoded with
``soundfile``. Features are computed once per split and cached under
``root/SpeechCommands/bso_cache/<settings>/`` ({training,validation,testing}.npz + meta.json).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from datamodules.base import BaseDataModule, dataset_not_found

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # the 35 words of v0.02; label = position (alphabetical)
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE, UNKNOWN = "_silence_", "_unknown_"
CLASSES_12 = (SILENCE, UNKNOWN, *KEYWORDS)  # TensorFlow's order for the 12-class task
SUBSETS = ("training", "validation", "testing")
# Each background-noise file is cut in time so silence clips of different splits never overlap.
_NOISE_REGIONS = {"training": (0.0, 0.8), "validation": (0.8, 0.9), "testing": (0.9, 1.0)}
_FOLDER_IN_ARCHIVE, _VERSION_DIR, _NOISE_DIR = "SpeechCommands", "speech_commands_v0.02", "_background_noise_"
CACHE_VERSION = 1
_HOW = (
    "pass download=True (torchaudio downloads speech_commands_v0.02.tar.gz, 2.3 GB, from "
    "http://download.tensorflow.org/data/ and extracts it), or extract that archive into "
    "<root>/SpeechCommands/speech_commands_v0.02"
)


def wav_truncation(path: Path) -> Optional[str]:
    """Why a RIFF/WAVE file is truncated (its ``data`` chunk is shorter than declared), else ``None``.

    libsndfile silently reads a cut-off WAV up to the cut, so this is checked separately.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # not RIFF/WAVE: left to soundfile
        size = os.fstat(f.fileno()).st_size
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                have = size - pos - 8
                if length not in (0, 0xFFFFFFFF) and have < length:
                    return f"truncated: the data chunk declares {length} bytes but the file holds {have}"
                return None
            pos += 8 + length + (length & 1)
    return "truncated: no data chunk"


def read_wav(path: Path) -> np.ndarray:
    """Mono float32 samples at 16 kHz, padded with zeros or trimmed to exactly 1 s.

    Raises on unreadable, truncated or empty files (the DataModule skips and counts those).
    """
    import soundfile

    problem = wav_truncation(path)
    if problem:
        raise ValueError(problem)
    data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    if data.shape[0] == 0:
        raise ValueError("no audio samples")
    wave = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        import torchaudio.functional as AF

        wave = AF.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    out = np.zeros(SAMPLE_RATE, dtype=np.float32)
    out[: min(len(wave), SAMPLE_RATE)] = wave[:SAMPLE_RATE]
    return out


def log_mel_images(waves: torch.Tensor, mel: torch.nn.Module, size: int, top_db: float = 80.0) -> torch.Tensor:
    """``[B, 16000]`` waveforms -> ``[B, 1, size, size]`` log-Mel images with values in [0, 1].

    Power Mel-spectrogram -> decibels relative to each clip's maximum, floored ``top_db`` below it
    -> scaled to [0, 1] -> resized to ``size`` x ``size`` (antialiased bilinear).
    """
    spec = mel(waves)  # [B, n_mels, frames]
    db = 10.0 * torch.log10(spec.clamp_min(1e-10))
    peak = db.amax(dim=(1, 2), keepdim=True)
    img = (db.clamp_min(peak - top_db) - (peak - top_db)) / top_db
    img = F.interpolate(img.unsqueeze(1), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return img.clamp(0.0, 1.0)


class SpeechCommandsDataModule(BaseDataModule):
    """Google Speech Commands v0.02 keyword spotting, ``x: [B, 1, S, S]`` in [-1, 1].

    Each clip is padded/trimmed to 1 s at 16 kHz, turned into a Mel-spectrogram (``n_mels`` bands,
    ``n_fft``-point windows every ``hop_length`` samples), log-scaled (dB relative to the clip's
    peak, 80 dB range, mapped to [0, 1]), resized to ``image_size`` x ``image_size`` and normalized
    with mean 0.5 and std 0.5. Splits are the official ones (``validation_list.txt``,
    ``testing_list.txt``, the rest for training).

    ``class_set``:

    * ``"35words"``: all 35 words, labels in :data:`WORDS` order.
    * ``"12class"``: the standard task: 10 keywords + ``_unknown_`` (the other 25 words) +
      ``_silence_`` (1 s clips cut from ``_background_noise_``), labels in :data:`CLASSES_12`
      order. As in TensorFlow's reference, each split holds every keyword clip plus
      ``unknown_percentage`` % and ``silence_percentage`` % of that count as unknown (a seeded
      sample of the other words) and silence (seeded cuts of the noise files; training cuts come
      from the first 80 % of each file, validation from the next 10 %, test from the last 10 %).

    Unreadable, empty or missing WAVs are skipped and counted, with a logged warning that names
    them; ``skipped_files`` lists them after ``setup``.
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
        class_set: Literal["35words", "12class"] = "35words",
        image_size: int = 32,
        n_mels: int = 40,
        n_fft: int = 480,
        hop_length: int = 160,
        silence_percentage: float = 10.0,
        unknown_percentage: float = 10.0,
    ) -> None:
        super().__init__(root, batch_size, num_workers, pin_memory, seed)
        if class_set not in ("35words", "12class"):
            raise ValueError(f"class_set must be '35words' or '12class', got {class_set!r}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if n_mels < 1 or n_fft < 2 or hop_length < 1:
            raise ValueError(f"need n_mels >= 1, n_fft >= 2, hop_length >= 1; got {n_mels}, {n_fft}, {hop_length}")
        for name, value in (("silence_percentage", silence_percentage), ("unknown_percentage", unknown_percentage)):
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} must lie in [0, 100], got {value}")
        self.download = download
        self.class_set = class_set
        self.classes = WORDS if class_set == "35words" else CLASSES_12
        self.num_classes = len(self.classes)
        self.image_size = image_size
        self.n_mels = n_mels
        self.n_fft = n_fft
        self.hop_length = hop_length
        self.silence_percentage = silence_percentage
        self.unknown_percentage = unknown_percentage
        self.skipped_files: list[str] = []
        self._listing: Optional[dict[str, list[tuple[str, str]]]] = None

    # -------------------------------------------------------------------------------- paths
    @property
    def data_dir(self) -> Path:
        return self.root / _FOLDER_IN_ARCHIVE / _VERSION_DIR

    @property
    def cache_dir(self) -> Path:
        name = f"{self.class_set}_{self.image_size}px_mel{self.n_mels}_fft{self.n_fft}_hop{self.hop_length}"
        if self.class_set == "12class":
            name += f"_sil{self.silence_percentage:g}_unk{self.unknown_percentage:g}_seed{self.seed}"
        return self.root / _FOLDER_IN_ARCHIVE / "bso_cache" / name

    # ---------------------------------------------------------------------------- preparing
    def _check_folder(self) -> None:
        expected = (
            "validation_list.txt, testing_list.txt, one folder of .wav files per word ("
            + ", ".join(WORDS) + ") and _background_noise_/*.wav"
        )
        problems = []
        if self.data_dir.is_dir():
            problems += [f"no {n}" for n in ("validation_list.txt", "testing_list.txt") if not (self.data_dir / n).is_file()]
            missing = [w for w in WORDS if not (self.data_dir / w).is_dir()]
            if missing:
                problems.append(f"no word folders {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
            if self.class_set == "12class" and not any((self.data_dir / _NOISE_DIR).glob("*.wav")):
                problems.append(f"no {_NOISE_DIR}/*.wav (needed for the silence class)")
        if not self.data_dir.is_dir() or problems:
            raise dataset_not_found("Speech Commands v0.02", self.data_dir, expected, _HOW, problem="; ".join(problems) or None)

    def _list_subsets(self) -> dict[str, list[tuple[str, str]]]:
        """``subset -> [(path relative to data_dir, word)]`` via torchaudio's official split."""
        from torchaudio.datasets import SPEECHCOMMANDS

        out = {}
        for subset in SUBSETS:
            ds = SPEECHCOMMANDS(str(self.root), download=False, subset=subset)
            items = []
            for n in range(len(ds)):
                relpath, _, word, _, _ = ds.get_metadata(n)
                items.append((Path(relpath).relative_to(_VERSION_DIR).as_posix(), word))
            out[subset] = items
        return out

    def _noise_files(self) -> list[str]:
        return sorted(p.name for p in (self.data_dir / _NOISE_DIR).glob("*.wav"))

    def _fingerprint(self, listing: dict[str, list[tuple[str, str]]]) -> str:
        h = hashlib.sha1()
        for subset in SUBSETS:
            h.update("\n".join(rel for rel, _ in listing[subset]).encode())
        if self.class_set == "12class":
            h.update("\n".join(self._noise_files()).encode())
        return h.hexdigest()

    def prepare_data(self) -> None:
        if self.download and not self.data_dir.is_dir():
            from torchaudio.datasets import SPEECHCOMMANDS

            self.root.mkdir(parents=True, exist_ok=True)
            SPEECHCOMMANDS(str(self.root), download=True)
        self._check_folder()
        listing = self._listing = self._listing or self._list_subsets()
        fingerprint = self._fingerprint(listing)
        meta_file = self.cache_dir / "meta.json"
        if meta_file.is_file():
            meta = json.loads(meta_file.read_text())
            if meta.get("version") == CACHE_VERSION and meta.get("fingerprint") == fingerprint:
                return
            log.warning("Speech Commands: the cache %s does not match %s; rebuilding it", self.cache_dir, self.data_dir)
            shutil.rmtree(self.cache_dir)
        self._build_cache(listing, fingerprint)

    def _select(self, subset: str, items: list[tuple[str, str]], rng: np.random.Generator) -> tuple[list[tuple[str, int]], int]:
        """Files with labels for one split, and the number of silence clips to add."""
        if self.class_set == "35words":
            index = {w: i for i, w in enumerate(WORDS)}
            return [(rel, index[w]) for rel, w in items if w in index], 0
        index = {w: i for i, w in enumerate(CLASSES_12)}
        known = [(rel, index[w]) for rel, w in items if w in KEYWORDS]
        unknown = [(rel, index[UNKNOWN]) for rel, w in items if w not in KEYWORDS]
        n_unknown = min(len(unknown), math.ceil(len(known) * self.unknown_percentage / 100))
        chosen = [unknown[i] for i in sorted(rng.permutation(len(unknown))[:n_unknown])]
        n_silence = math.ceil(len(known) * self.silence_percentage / 100)
        return known + chosen, n_silence

    def _silence_clips(self, subset: str, n: int, rng: np.random.Generator, skipped: list[str]) -> list[np.ndarray]:
        if n == 0:
            return []
        import soundfile

        lo, hi = _NOISE_REGIONS[subset]
        regions = []
        for name in self._noise_files():
            path = self.data_dir / _NOISE_DIR / name
            try:
                data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
            except Exception as exc:  # noqa: BLE001
                skipped.append(f"{path} ({type(exc).__name__}: {exc})")
                continue
            wave = data.mean(axis=1)
            if rate != SAMPLE_RATE:
                import torchaudio.functional as AF

                wave = AF.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
            start, stop = int(lo * len(wave)), int(hi * len(wave))
            if stop - start >= SAMPLE_RATE:
                regions.append(wave[start:stop])
        if not regions:
            raise RuntimeError(
                f"Speech Commands: no file in {self.data_dir / _NOISE_DIR} has a {subset} region "
                f"({lo:.0%}-{hi:.0%} of its length) of at least 1 s to cut silence clips from"
            )
        clips = []
        for _ in range(n):
            region = regions[int(rng.integers(len(regions)))]
            offset = int(rng.integers(len(region) - SAMPLE_RATE + 1))
            clips.append(region[offset : offset + SAMPLE_RATE].copy())
        return clips

    def _build_cache(self, listing: dict[str, list[tuple[str, str]]], fingerprint: str) -> None:
        import torchaudio

        mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=self.n_fft, hop_length=self.hop_length, n_mels=self.n_mels
        )
        tmp = self.cache_dir.with_name(f"{self.cache_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        skipped: list[str] = []
        counts = {}
        try:
            for subset in SUBSETS:
                rng = np.random.Generator(np.random.PCG64([self.seed, SUBSETS.index(subset)]))
                files, n_silence = self._select(subset, listing[subset], rng)
                features, labels = [], []
                with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                    bar = tqdm(total=len(files) + n_silence, desc=f"Speech Commands: {subset} log-Mel images", unit="clip")
                    for start in range(0, len(files), 1024):
                        chunk = files[start : start + 1024]
                        waves = list(pool.map(self._try_read, [self.data_dir / rel for rel, _ in chunk]))
                        good = [(w, label) for w, (_, label) in zip(waves, chunk) if not isinstance(w, str)]
                        skipped += [w for w in waves if isinstance(w, str)]
                        if good:
                            batch = torch.from_numpy(np.stack([w for w, _ in good]))
                            features.append(log_mel_images(batch, mel, self.image_size).half().numpy())
                            labels += [label for _, label in good]
                        bar.update(len(chunk))
                    clips = self._silence_clips(subset, n_silence, rng, skipped)
                    for start in range(0, len(clips), 1024):
                        batch = torch.from_numpy(np.stack(clips[start : start + 1024]))
                        features.append(log_mel_images(batch, mel, self.image_size).half().numpy())
                        labels += [CLASSES_12.index(SILENCE)] * len(batch)
                        bar.update(len(batch))
                    bar.close()
                if not labels:
                    raise RuntimeError(f"Speech Commands: no readable clip in the {subset} split of {self.data_dir}")
                np.savez(tmp / f"{subset}.npz", features=np.concatenate(features), labels=np.array(labels, dtype=np.int64))
                counts[subset] = len(labels)
            meta = {
                "version": CACHE_VERSION, "fingerprint": fingerprint, "classes": list(self.classes),
                "counts": counts, "skipped": skipped,
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            try:
                os.rename(tmp, self.cache_dir)
            except OSError:
                if not (self.cache_dir / "meta.json").is_file():
                    raise
                shutil.rmtree(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @staticmethod
    def _try_read(path: Path) -> np.ndarray | str:
        try:
            return read_wav(path)
        except Exception as exc:  # noqa: BLE001 - skip-and-count; the caller reports the paths
            reason = "file is missing" if not path.exists() else f"{type(exc).__name__}: {exc}"
            return f"{path} ({reason})"

    def _warn_skipped(self, skipped: list[str]) -> None:
        shown = "\n  ".join(skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more (all listed in {self.cache_dir / 'meta.json'})" if len(skipped) > 20 else ""
        log.warning("Speech Commands: skipped %d unreadable audio file(s):\n  %s%s", len(skipped), shown, more)

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
            self._warn_skipped(self.skipped_files)
        self.train_set = self._load("training")
        self.val_set = self._load("validation")
        self.test_set = self._load("testing")
