"""The controller's liveness: ``fleet run --heartbeat PATH`` touches PATH after every pass, and
``fleet alive`` (the pod's liveness probe) says whether that happened recently. A pass that
hangs (a connection that never answers) stops the touches and the kubelet restarts the pod; a
pass that fails (Prometheus away) still touches it, because a restart would not bring
Prometheus back and the next pass retries anyway."""

from __future__ import annotations

import time
from pathlib import Path


def beat(path: Path) -> None:
    """Touch ``path`` (created if missing): its mtime is the last pass's end."""
    path.touch()


def age_s(path: Path, now: float | None = None) -> float | None:
    """Seconds since the last beat; None when there has been none."""
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    return max((time.time() if now is None else now) - mtime, 0.0)


def check(path: Path, max_age_s: float) -> tuple[bool, str]:
    """(alive, why) for ``fleet alive``."""
    age = age_s(path)
    if age is None:
        return False, f"no pass has finished: {path} does not exist"
    if age > max_age_s:
        return False, f"the last pass finished {age:.0f} s ago (more than {max_age_s:g} s)"
    return True, f"the last pass finished {age:.0f} s ago"
