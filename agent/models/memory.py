"""Whether this node has room to keep a second version of a model loaded (for a bake).

Available memory is the smaller of ``MemAvailable`` in ``/proc/meminfo`` and, when the
process runs in a cgroup v2 with a ``memory.max`` limit, that limit less ``memory.current``.
A loaded version is estimated at ``FACTOR`` times its ONNX file (the weights held by ONNX
Runtime, pre-packed copies of them and its arena): an estimate, not a measurement.
"""

from __future__ import annotations

from pathlib import Path

FACTOR = 3


def estimate_bytes(model_file: Path) -> int:
    return FACTOR * model_file.stat().st_size


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
    limit = _cgroup_room(proc, cgroup_root)
    if limit is not None:
        found.append(limit)
    return min(found) if found else None


def _cgroup_room(proc: Path, cgroup_root: Path) -> int | None:
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
        path = next(ln.split("::", 1)[1] for ln in lines if ln.startswith("0::"))
        folder = cgroup_root / path.lstrip("/")
        raw = (folder / "memory.max").read_text().strip()
        if raw == "max":
            return None
        return max(0, int(raw) - int((folder / "memory.current").read_text().strip()))
    except (OSError, ValueError, StopIteration):
        return None


def room_for(model_file: Path, proc: Path = Path("/proc"),
             cgroup_root: Path = Path("/sys/fs/cgroup")) -> tuple[bool, int, int | None]:
    """(room, needed, available) for loading ``model_file`` beside what is loaded."""
    needed = estimate_bytes(model_file)
    available = available_bytes(proc, cgroup_root)
    return (available is None or available >= needed), needed, available
