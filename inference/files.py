"""Writing files so that a crash or power cut leaves the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from inference.errors import EdgeError


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, rename it over ``path``.

    The directory is fsynced too, so the rename itself survives a power cut. ``mode``: the
    temp file starts as 0600, which would hide models and state from other readers.
    """
    with _atomic_file(path, mode) as f:
        f.write(data)


def atomic_copy(source: Path, path: Path, mode: int = 0o644) -> None:
    """Copy ``source`` to ``path`` like :func:`atomic_write` (streamed: a model may be large)."""
    with _atomic_file(path, mode) as f, source.open("rb") as src:
        shutil.copyfileobj(src, f, 1 << 20)


@contextlib.contextmanager
def _atomic_file(path: Path, mode: int) -> Iterator[BinaryIO]:
    """A temp file beside ``path`` to write; on a clean exit fsynced and renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (the directory entry itself is flushed)."""
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class NotWritableError(EdgeError):
    """A directory the daemon must write to cannot be created or written."""


def check_writable_dir(path: Path, what: str) -> None:
    """Create ``path`` if missing and prove a file can be written in it, so that a read-only,
    full or foreign-owned directory stops start-up with one clear line, not a traceback later
    in the middle of a model update."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b"probe")
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise NotWritableError(
            f"{what} {path} is not writable: {reason}", {"path": str(path)}
        ) from None

