"""Google Speech Commands files: listing (torchaudio's official split), WAV reading (soundfile), log-Mel images,
silence cuts, and the feature cache.

Layout under ``root`` (torchaudio's)::

    SpeechCommands/speech_commands_<version>/<word>/<speaker>_nohash_<n>.wav
    SpeechCommands/speech_commands_<version>/{validation_list.txt, testing_list.txt, _background_noise_/*.wav}
    SpeechCommands/bso_cache/<settings>/{training,validation,testing}.npz + meta.json   (this module's cache)
"""

from __future__ import annotations

import json
import math
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from bso_lightning.atomic import atomic_directory
from datamodules.base import DataFileError, DatasetNotFoundError
from datamodules.safe_files import check_sha256, extract_tar

SAMPLE_RATE = 16000
WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go",
    "happy", "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven",
    "sheila", "six", "stop", "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # the 35 words of v0.02; label = position (alphabetical)
WORDS_V1 = tuple(w for w in WORDS if w not in ("backward", "follow", "forward", "learn", "visual"))  # v0.01's 30
VERSION_WORDS = {"v0.02": WORDS, "v0.01": WORDS_V1}
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE, UNKNOWN = "_silence_", "_unknown_"
CLASSES_12 = (SILENCE, UNKNOWN, *KEYWORDS)  # TensorFlow's order for the 12-class task
SUBSETS = ("training", "validation", "testing")
NOISE_DIR = "_background_noise_"
FOLDER_IN_ARCHIVE = "SpeechCommands"
ARCHIVE_SIZE = {"v0.02": "2.3 GB", "v0.01": "1.4 GB"}
ARCHIVE_URL = "http://download.tensorflow.org/data/speech_commands_{version}.tar.gz"
#: SHA-256 of the published archives (torchaudio's ``_CHECKSUMS``).
ARCHIVE_SHA256 = {"v0.01": "743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
                  "v0.02": "af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58"}
# Each background-noise file is cut in time so silence clips of different splits never overlap.
NOISE_REGIONS = {"training": (0.0, 0.8), "validation": (0.8, 0.9), "testing": (0.9, 1.0)}
CACHE_VERSION = 2
_FEATURE_CHUNK = 1024


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


def _mono_16k(data: np.ndarray, rate: int) -> np.ndarray:
    wave = data.mean(axis=1)
    if rate != SAMPLE_RATE:
        import torchaudio.functional as AF

        wave = AF.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    return wave


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
    wave = _mono_16k(data, rate)
    if not np.isfinite(wave).all():  # (float WAVs can hold NaN/Inf: skipped and named, never cached as features)
        raise ValueError(f"{int((~np.isfinite(wave)).sum())} of its {len(wave)} samples are NaN/Inf")
    out = np.zeros(SAMPLE_RATE, dtype=np.float32)
    out[: min(len(wave), SAMPLE_RATE)] = wave[:SAMPLE_RATE]
    return out


def try_read_wav(path: Path) -> np.ndarray | str:
    """:func:`read_wav`, or the reason it failed (``"<path> (<why>)"``) for the skip-and-count report."""
    try:
        return read_wav(path)
    except Exception as exc:  # noqa: BLE001 - skip-and-count; the caller reports the paths
        reason = "file is missing" if not path.exists() else f"{type(exc).__name__}: {exc}"
        return f"{path} ({reason})"


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


def word_folders(data_dir: Path) -> list[str]:
    """The word folders present (every sub-folder except ``_background_noise_``), sorted."""
    return sorted(p.name for p in data_dir.iterdir() if p.is_dir() and p.name != NOISE_DIR and not p.name.startswith("."))


def list_subsets(root: Path, version: str, words: Sequence[str]) -> dict[str, list[tuple[str, str]]]:
    """``subset -> [(path relative to the version folder, word)]`` via torchaudio's official split, for ``words``."""
    from torchaudio.datasets import SPEECHCOMMANDS

    keep = set(words)
    version_dir = f"speech_commands_{version}"
    out = {}
    for subset in SUBSETS:
        ds = SPEECHCOMMANDS(str(root), url=version_dir, folder_in_archive=FOLDER_IN_ARCHIVE, download=False, subset=subset)
        items = []
        for n in range(len(ds)):
            relpath, _, word, _, _ = ds.get_metadata(n)
            if word in keep:
                items.append((Path(relpath).relative_to(version_dir).as_posix(), word))
        out[subset] = items
    return out


def noise_files(data_dir: Path) -> list[str]:
    return sorted(p.name for p in (data_dir / NOISE_DIR).glob("*.wav"))


def silence_clips(data_dir: Path, subset: str, n: int, rng: np.random.Generator, skipped: list[str]) -> list[np.ndarray]:
    """``n`` seeded 1 s cuts from the ``subset`` region of each background-noise file."""
    if n == 0:
        return []
    import soundfile

    lo, hi = NOISE_REGIONS[subset]
    regions = []
    for name in noise_files(data_dir):
        path = data_dir / NOISE_DIR / name
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except Exception as exc:  # noqa: BLE001
            skipped.append(f"{path} ({type(exc).__name__}: {exc})")
            continue
        wave = _mono_16k(data, rate)
        start, stop = int(lo * len(wave)), int(hi * len(wave))
        if stop - start >= SAMPLE_RATE:
            regions.append(wave[start:stop])
    if not regions:
        raise RuntimeError(f"Speech Commands: no file in {data_dir / NOISE_DIR} has a {subset} region "
                           f"({lo:.0%}-{hi:.0%} of its length) of at least 1 s to cut silence clips from")
    clips = []
    for _ in range(n):
        region = regions[int(rng.integers(len(regions)))]
        offset = int(rng.integers(len(region) - SAMPLE_RATE + 1))
        clips.append(region[offset: offset + SAMPLE_RATE].copy())
    return clips


def select_12class(items: list[tuple[str, str]], unknown_percentage: float, silence_percentage: float,
                   rng: np.random.Generator) -> tuple[list[tuple[str, int]], int]:
    """TensorFlow's 12-class selection: every keyword clip, a seeded sample of the others as ``_unknown_``,
    and the number of ``_silence_`` clips to cut (percentages of the keyword count)."""
    index = {w: i for i, w in enumerate(CLASSES_12)}
    known = [(rel, index[w]) for rel, w in items if w in KEYWORDS]
    unknown = [(rel, index[UNKNOWN]) for rel, w in items if w not in KEYWORDS]
    n_unknown = min(len(unknown), math.ceil(len(known) * unknown_percentage / 100))
    chosen = [unknown[i] for i in sorted(rng.permutation(len(unknown))[:n_unknown])]
    return known + chosen, math.ceil(len(known) * silence_percentage / 100)


def build_feature_cache(cache_dir: Path, data_dir: Path, selections: dict[str, tuple[list[tuple[str, int]], int]],
                        rngs: dict[str, np.random.Generator], image: Callable[[torch.Tensor], torch.Tensor],
                        meta: dict) -> None:
    """Write ``<subset>.npz`` (float16 features, int64 labels) for every subset and ``meta.json``, atomically.

    ``selections[subset]`` = (files with labels, number of silence clips); unreadable files are skipped and
    listed in ``meta["skipped"]``.
    """
    skipped: list[str] = []
    counts = {}
    with atomic_directory(cache_dir, complete_marker="meta.json") as tmp:
        for subset, (files, n_silence) in selections.items():
            features, labels = [], []
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool, \
                    tqdm(total=len(files) + n_silence, desc=f"Speech Commands: {subset} log-Mel images", unit="clip") as bar:
                for start in range(0, len(files), _FEATURE_CHUNK):
                    chunk = files[start: start + _FEATURE_CHUNK]
                    waves = list(pool.map(try_read_wav, [data_dir / rel for rel, _ in chunk]))
                    good = [(w, label) for w, (_, label) in zip(waves, chunk) if not isinstance(w, str)]
                    skipped += [w for w in waves if isinstance(w, str)]
                    if good:
                        features.append(image(torch.from_numpy(np.stack([w for w, _ in good]))).half().numpy())
                        labels += [label for _, label in good]
                    bar.update(len(chunk))
                clips = silence_clips(data_dir, subset, n_silence, rngs[subset], skipped)
                for start in range(0, len(clips), _FEATURE_CHUNK):
                    batch = torch.from_numpy(np.stack(clips[start: start + _FEATURE_CHUNK]))
                    features.append(image(batch).half().numpy())
                    labels += [CLASSES_12.index(SILENCE)] * len(batch)
                    bar.update(len(batch))
            if not labels:
                raise DataFileError(data_dir, f"no readable clip in the {subset} split of Speech Commands "
                                              f"({len(skipped)} unreadable file(s), e.g. {skipped[:1]})")
            np.savez(tmp / f"{subset}.npz", features=np.concatenate(features), labels=np.array(labels, dtype=np.int64))
            counts[subset] = len(labels)
        (tmp / "meta.json").write_text(json.dumps({"version": CACHE_VERSION, **meta, "counts": counts,
                                                   "skipped": skipped}, indent=1))


def download_and_extract(root: Path, version: str, data_dir: Path, how: str) -> None:
    """Fetch ``speech_commands_<version>.tar.gz`` into ``root`` unless it is there already, check its published SHA-256
    and extract it into ``data_dir`` with no member outside it (``how``: the advice of a failed download)."""
    archive = root / f"speech_commands_{version}.tar.gz"
    url, sha256 = ARCHIVE_URL.format(version=version), ARCHIVE_SHA256[version]
    if archive.is_file():
        check_sha256(archive, sha256)
    else:
        from torch.hub import download_url_to_file  # a temporary file, renamed once its hash matches

        root.mkdir(parents=True, exist_ok=True)
        try:
            download_url_to_file(url, str(archive), hash_prefix=sha256, progress=True)
        except OSError as exc:  # offline (URLError), refused, disk full
            raise DatasetNotFoundError(f"Speech Commands {version}: download of {url} failed "
                                       f"({type(exc).__name__}: {' '.join(str(exc).split())}); "
                                       f"{how}", data_dir) from exc
        except RuntimeError as exc:  # torch.hub: "invalid hash value"
            raise DataFileError(url, f"the download does not have the published SHA-256 {sha256}",
                                "Retry; if it persists the file on the server changed.") from exc
    extract_tar(archive, data_dir)
