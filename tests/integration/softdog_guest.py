"""Runs inside the qemu guest (see test_softdog.py): the daemon's own Supervisor and
HardwareWatchdog feeding a real softdog, healthy or with its event loop wedged.

Usage: python softdog_guest.py healthy|wedge TIMEOUT_S RUN_S
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from agent.health import Liveness
from agent.watchdog.hardware import HardwareWatchdog
from agent.watchdog.supervisor import State, Supervisor


class NoSystemd:
    def notify(self, state: str) -> None:
        pass


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


async def main(mode: str, timeout_s: int, run_s: float) -> None:
    dog = HardwareWatchdog(Path("/dev/watchdog"), timeout_s)
    supervisor = Supervisor(
        lambda: Liveness(True, 0.0, 0.0, ()),
        lambda: State(True, "serving"),
        tick_s=1.0,
        extend_timeout_s=10,
        hardware=dog,
        notifier=NoSystemd(),  # type: ignore[arg-type]
    )
    supervisor.start()
    print(f"EDGE armed timeout={dog.effective_timeout_s} at={uptime():.2f}", flush=True)
    if mode == "wedge":
        await asyncio.sleep(2)
        print(f"EDGE wedged at={uptime():.2f}", flush=True)
        # The event loop is blocked: the supervisor never ticks again.
        time.sleep(run_s)  # noqa: ASYNC251  (blocking the loop is the point)
    else:
        await asyncio.sleep(run_s)
    await supervisor.stop(clean=True)
    print(f"EDGE done pings={supervisor.pings} at={uptime():.2f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
