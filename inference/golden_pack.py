"""Writing a golden set for a version: the archive that travels with it (``edge-agent model
pack``). A detection set becomes a tar of ``images/`` and ``labels/`` with fixed metadata (two
packs of the same folder give the same bytes, so the same sha256); a tensor set is its ``.npz``.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path, PurePosixPath

from inference.files import atomic_copy, atomic_write
from inference.golden import GoldenFrame, open_set


def write_detection_archive(source: Path, frames: list[GoldenFrame], dest: Path) -> None:
    """``frames`` (read from the folder or archive ``source``) as a tar at ``dest``."""
    buffer = io.BytesIO()
    with open_set(source) as files, tarfile.open(fileobj=buffer, mode="w",
                                                 format=tarfile.PAX_FORMAT) as tar:
        for frame in frames:
            suffix = PurePosixPath(frame.image).suffix.lower()
            _add(tar, f"images/{frame.name}{suffix}", frame.data)
            _add(tar, f"labels/{frame.name}.txt", files.read(frame.label))
    atomic_write(dest, buffer.getvalue())


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def write_tensor_archive(source: Path, dest: Path) -> None:
    atomic_copy(source, dest)
