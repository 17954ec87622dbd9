"""Cold start: a fresh daemon process to ``/health`` 200, from the state an earlier run left on
disk."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchmarks.report import Target
from tests.support import Daemon


async def cold_starts(config: Path, state: Path, times: int) -> list[float]:
    out = []
    for _ in range(times):
        start = time.monotonic()
        d = Daemon(["--config", str(config), "--state-dir", str(state)])
        try:
            await d.wait_ready(timeout=120)
            out.append(time.monotonic() - start)
        finally:
            d.stop()
    return out


def target(colds: list[float]) -> Target:
    median = statistics.median(colds)
    return Target("cold start to /health 200 from disk (s, median of 3)", median, "<= 1.0",
                  median <= 1.0, ", ".join(f"{c:.2f}" for c in colds))
