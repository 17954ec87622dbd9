"""Whether this node has room to keep a second version of a model loaded (a candidate shadowed
before its swap, the previous version in a bake).

Available memory is the smallest of ``MemAvailable`` in ``/proc/meminfo`` and, when the process
runs in a memory cgroup with a limit, that limit less the cgroup's usage (cgroup v2
``memory.max``/``memory.current``; v1 ``memory.limit_in_bytes``/``memory.usage_in_bytes``, as
on JetPack and older K3s nodes). A loaded session is estimated at ``FACTOR`` times its ONNX file
(the weights held by ONNX Runtime, pre-packed copies of them and its arena): an estimate, not a
measurement. A second version costs two: its own session(s) and the single-threaded session its
shadow samples run on.
"""

from __future__ import annotations

from pathlib import Path

FACTOR = 3
V1_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1


def estimate_bytes(model_file: Path, sessions: int = 1) -> int:
    return sessions * FACTOR * model_file.stat().st_size


def available_bytes(proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
                    ) -> int | None:
    """Bytes this process may still allocate; None when nothing says."""
    found: list[int] = []
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    found += [room for room in (_cgroup_v2_room(proc, cgroup_root),
                                _cgroup_v1_room(proc, cgroup_root)) if room is not None]
    return min(found) if found else None


def _own_cgroup(proc: Path, controller: str) -> str | None:
    """This process's cgroup path for ``controller`` ("" for the v2 unified hierarchy)."""
    try:
        for line in (proc / "self" / "cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return path
    except (OSError, ValueError):
        pass
    return None


def _folder(mount: Path, path: str) -> Path:
    """The cgroup's folder; in a cgroup namespace (a container) the mount is its root."""
    folder = mount / path.lstrip("/")
    return folder if folder.is_dir() else mount


def _cgroup_v2_room(proc: Path, cgroup_root: Path) -> int | None:
    path = _own_cgroup(proc, "")
    if path is None:
        return None
    try:
        folder = _folder(cgroup_root, path)
        raw = (folder / "memory.max").read_text().strip()
        if raw == "max":
            return None
        return max(0, int(raw) - int((folder / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def _cgroup_v1_room(proc: Path, cgroup_root: Path) -> int | None:
    path = _own_cgroup(proc, "memory")
    if path is None:
        return None
    try:
        folder = _folder(cgroup_root / "memory", path)
        limit = int((folder / "memory.limit_in_bytes").read_text().strip())
        if limit >= V1_UNLIMITED:
            return None
        return max(0, limit - int((folder / "memory.usage_in_bytes").read_text().strip()))
    except (OSError, ValueError):
        return None


def room_for(model_file: Path, sessions: int = 1, min_free_bytes: int = 0,
             proc: Path = Path("/proc"), cgroup_root: Path = Path("/sys/fs/cgroup")
             ) -> tuple[bool, int, int | None]:
    """(room, needed, available) for loading ``sessions`` sessions of ``model_file`` beside
    what is loaded and keeping ``min_free_bytes`` available after them."""
    needed = estimate_bytes(model_file, sessions) + min_free_bytes
    available = available_bytes(proc, cgroup_root)
    return (available is None or available >= needed), needed, available
