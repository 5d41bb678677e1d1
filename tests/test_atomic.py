"""The one build-under-a-temporary-name-then-rename helper (caches, converted folders, exports)."""

from __future__ import annotations

import pytest

from bso_lightning.atomic import atomic_directory, atomic_file


def test_directory_appears_complete_or_not_at_all(tmp_path):
    target = tmp_path / "cache" / "frames"
    with atomic_directory(target) as tmp:
        (tmp / "a.npy").write_bytes(b"x")
        assert not target.exists() and tmp.parent == target.parent
    assert (target / "a.npy").read_bytes() == b"x"
    assert [p.name for p in target.parent.iterdir()] == ["frames"]  # no temporary folder left

    failed = tmp_path / "cache" / "other"
    with pytest.raises(RuntimeError, match="half-way"):
        with atomic_directory(failed) as tmp:
            (tmp / "part").write_bytes(b"y")
            raise RuntimeError("half-way")
    assert not failed.exists() and sorted(p.name for p in failed.parent.iterdir()) == ["frames"]


def test_directory_finished_by_another_process_is_kept(tmp_path):
    target = tmp_path / "frames"
    with atomic_directory(target, complete_marker="files.json") as tmp:
        (tmp / "files.json").write_text("ours")
        target.mkdir()  # meanwhile another process finished the same cache
        (target / "files.json").write_text("theirs")
    assert (target / "files.json").read_text() == "theirs" and len(list(tmp_path.iterdir())) == 1
    # an incomplete folder in the way (no marker) is an error, not silently kept
    other = tmp_path / "other"
    with pytest.raises(OSError):
        with atomic_directory(other, complete_marker="files.json") as tmp:
            (tmp / "files.json").write_text("ours")
            other.mkdir()
            (other / "junk").write_text("half")
    assert not list(tmp_path.glob("*.tmp-*"))


def test_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "model.bso"
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"new but broken")
            raise ValueError("encoding failed")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]
    with atomic_file(target) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and list(tmp_path.iterdir()) == [target]


def test_file_gets_the_usual_mode_not_mkstemps_0600(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(mask)
    assert (tmp_path / "out.bin").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_leaves_the_previous_file_and_no_temporary_one(tmp_path):
    import errno

    target = tmp_path / "model.ckpt"
    target.write_bytes(b"complete previous checkpoint")
    with pytest.raises(OSError, match="No space left"):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert target.read_bytes() == b"complete previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ckpt"]
    with pytest.raises(IsADirectoryError, match="is a folder"):
        with atomic_file(tmp_path):
            pass
