"""Thread pools that start every thread up front.

A ``ThreadPoolExecutor`` starts a thread only when a task finds none idle, so a pool fills
whenever two blocking calls first overlap: minutes or hours after start on a quiet node. Started
up front, the daemon's thread count is fixed once it is up, so a thread that appears later is a
leak, not a pool catching up (the soak test and an operator watching ``top -H`` rely on that).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from inference.cpu import usable_cores

log = logging.getLogger(__name__)

PRESTART_TIMEOUT_S = 10.0


def io_threads() -> int:
    """asyncio's own default size, ``min(32, cpus + 4)``, counted from the cores we may use."""
    return min(32, usable_cores() + 4)


def prestart(pool: ThreadPoolExecutor, threads: int) -> None:
    """Make ``pool`` start ``threads`` threads now.

    Each task waits on a barrier until all are running, so none finishes early and leaves a
    thread idle for the next one to reuse: every submit has to start a thread of its own.
    If the barrier times out (a machine too busy to start threads), the pool stays usable and
    fills lazily instead."""
    barrier = threading.Barrier(threads)
    futures = [pool.submit(barrier.wait, PRESTART_TIMEOUT_S) for _ in range(threads)]
    for future in futures:
        try:
            future.result()
        except threading.BrokenBarrierError:
            log.warning("could not start %d threads in %.0f s; the pool starts them as needed",
                        threads, PRESTART_TIMEOUT_S)
            return
