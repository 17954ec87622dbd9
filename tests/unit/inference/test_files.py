"""Atomic writes and copies: the old file or the new one, never half, no temp file left."""

from __future__ import annotations

import stat

import pytest

from inference.files import atomic_copy, atomic_write


def test_a_copy_replaces_the_file_whole_and_readable(tmp_path):
    source, dest = tmp_path / "model.onnx", tmp_path / "out" / "model.onnx"
    source.write_bytes(b"x" * (3 << 20))  # more than one copy chunk
    atomic_write(dest, b"old")
    atomic_copy(source, dest)
    assert dest.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.onnx"]


def test_a_failed_copy_leaves_the_old_file_and_no_temp_file(tmp_path):
    dest = tmp_path / "model.onnx"
    atomic_write(dest, b"old")
    with pytest.raises(IsADirectoryError):
        atomic_copy(tmp_path, dest)  # a folder cannot be read as a file
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
