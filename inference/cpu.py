"""How many CPU cores this process may really use (affinity mask and cgroup quota)."""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path


def usable_cores(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Cores the scheduler lets us run on, capped by a cgroup v2/v1 CPU quota.

    A K3s pod with ``limits.cpu: 2`` on a 16-core node sees 16 CPUs in ``os.cpu_count()``;
    sizing thread pools from that oversubscribes the quota and throttles every request.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cgroup_quota(root: Path) -> float | None:
    try:  # cgroup v2: "max 100000" or "200000 100000"
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def lower_thread_priority(by: int) -> None:
    """Raise the calling thread's nice value by ``by`` (Linux: nice is per thread, and threads
    this one starts inherit it, ONNX Runtime's pool threads included).

    Compute threads a little below the event loop let the loop win the cores back at once
    when a request, a health probe or the watchdog's tick arrives. Raising nice needs no
    privilege; anything that fails leaves the priority as it was.
    """
    if by <= 0:
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + by))
    except (AttributeError, OSError):  # not Linux, or not permitted: run at the same priority
        pass
