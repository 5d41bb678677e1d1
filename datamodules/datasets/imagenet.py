"""ImageNet-1k (ILSVRC 2012) files: an ImageFolder tree whose images are checked before training.

On-disk layout under ``root``::

    train/<wnid>/*.JPEG, val/<wnid>/*.JPEG     class-per-folder trees (the same wnids on both sides)
    ILSVRC2012_img_{train,val}.tar, ILSVRC2012_devkit_t12.tar.gz   the official archives (torchvision unpacks them)

A bad image fails before training, naming it: :func:`check_image_headers` reads the header of every image
(zero-byte files and files PIL cannot identify, e.g. an HTML error page saved as ``.JPEG``). An image whose header
is fine but whose body is damaged (truncated) is found only when it is decoded: :class:`CheckedImageFolder` hands
a :class:`~datamodules.sampling.FailedSample` to the loader, which raises the :class:`DataFileError` naming the file
in the main process, also from a worker process. Failing is deliberate (no skip-and-count as for Speech Commands):
a dropped image would change the epoch's batches and the class balance silently, and a broken file in an ImageNet
copy usually means the copy is incomplete.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Optional

from PIL import Image
from torchvision import datasets

from datamodules.base import DataFileError
from datamodules.sampling import FailedSample

ARCHIVES = ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
REMEDY = "delete or replace the file (re-extract it from the archive), then run again"
#: Threads of the header check (file opens overlap on network file systems).
CHECK_THREADS = 16


def load_image(path: str) -> Image.Image:
    """``ImageFolder``'s loader (RGB) that raises :class:`DataFileError` naming the file on any decoding error."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            return image.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataFileError(path, f"not a decodable image ({type(exc).__name__}: {exc})", REMEDY) from exc


def header_problem(path: str) -> Optional[str]:
    """Why ``path`` is not an image (zero bytes, or a header PIL cannot identify), else ``None`` (reads the header
    only, not the pixels)."""
    try:
        if Path(path).stat().st_size == 0:
            return "empty (0 bytes)"
        with Image.open(path) as image:
            image.size  # noqa: B018 - identified from the header
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def check_image_headers(paths: list[str], threads: int = CHECK_THREADS) -> None:
    """Raise :class:`DataFileError` naming every file of ``paths`` that is empty or not an image."""
    with ThreadPoolExecutor(max(1, threads)) as pool:
        problems = [(p, why) for p, why in zip(paths, pool.map(header_problem, paths, chunksize=256)) if why]
    if problems:
        listed = "; ".join(f"{p} ({why})" for p, why in problems[:10])
        more = f"; ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise DataFileError(problems[0][0], f"{len(problems)} of {len(paths)} image file(s) are empty or not images: "
                                            f"{listed}{more}", REMEDY + " (check_images=False skips this check)")


def check_class_sets(train_root: Path, val_root: Path) -> None:
    """Raise :class:`DataFileError` naming the class folders that only one of the two trees has (the labels of
    ``ImageFolder`` are positions in the sorted folder names: two different sets would mislabel every class)."""
    train = {p.name for p in train_root.iterdir() if p.is_dir()}
    val = {p.name for p in val_root.iterdir() if p.is_dir()}
    if train == val:
        return

    def some(names: set[str]) -> str:
        shown = sorted(names)[:10]
        return (", ".join(shown) + (f", ... ({len(names)} in all)" if len(names) > 10 else "")) if names else "none"

    raise DataFileError(val_root, f"its class folders differ from those of {train_root}: missing in "
                                  f"{val_root.name}/: {some(train - val)}; missing in {train_root.name}/: "
                                  f"{some(val - train)}", "Both need the same class folders (wnids)")


class CheckedImageFolder(datasets.ImageFolder):
    """``ImageFolder`` over :func:`load_image`; an image that cannot be decoded becomes a ``FailedSample`` (the
    loader raises its :class:`DataFileError` in the main process, naming the file)."""

    def __init__(self, root: str | Path, transform: Any = None) -> None:
        super().__init__(str(root), transform=transform, loader=load_image)

    def __getitem__(self, index: int) -> Any:
        try:
            return super().__getitem__(index)
        except DataFileError as exc:
            return FailedSample(exc)


def unpack_archives(root: Path, split: str) -> None:
    """Let torchvision unpack the official archive of ``split`` into ``root/<split>`` (once)."""
    datasets.ImageNet(str(root), split=split)
