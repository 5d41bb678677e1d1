"""Tiny datasets in their real on-disk formats, written once per test session by the generator."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest


@pytest.fixture(scope="session")
def data_roots(tmp_path_factory, fixtures_module) -> dict[str, Path]:
    """``name -> root`` for every fixture dataset (shared: tests must not modify these)."""
    return fixtures_module.make_all(tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def private_root(data_roots, tmp_path) -> Callable[[str], Path]:
    """Copy one fixture dataset into this test's own folder, for tests that modify or cache it."""

    def copy(name: str, folder: str | None = None) -> Path:
        target = tmp_path / (folder or name)
        shutil.copytree(data_roots[name], target, ignore=shutil.ignore_patterns("bso_cache"))
        return target

    return copy
