"""Per-class train/test splits of a labelled listing: seeded (class-balanced) or the first files of each class."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def seeded_per_class(labels: np.ndarray, train_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, a seeded random ``train_per_class`` samples train, the rest test (sorted indices)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    train, test = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[rng.permutation(len(idx))]
        train.append(idx[:train_per_class])
        test.append(idx[train_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def first_per_class(labels: np.ndarray, names: Sequence[str], train_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Per class, the first ``train_per_class`` samples by file name (plain string order) train, the rest test.

    This is spikingjelly's ``split_to_train_test_set(random_split=False)`` over a torchvision
    ``DatasetFolder``, which lists each class's files sorted by name (so ``..._10`` comes before ``..._2``).
    """
    train, test = [], []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        idx = idx[np.argsort([names[i].rsplit("/", 1)[-1] for i in idx], kind="stable")]
        train.append(idx[:train_per_class])
        test.append(idx[train_per_class:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
