"""One loop that tells the supervisors how the daemon is: systemd (sd_notify) and the hardware
watchdog.

It runs on the event loop on purpose: a blocked loop sends nothing, so systemd and the board's
watchdog notice a wedge without any cooperation from the wedged code. Each tick:

- ``READY=1`` the first time every model is loaded and warm (what ``/health`` 200 means);
- ``STATUS=...`` whenever the one-line state changes;
- ``EXTEND_TIMEOUT_USEC`` while models are still loading (a TensorRT build takes minutes), so
  ``TimeoutStartSec`` can stay short for everything else;
- ``WATCHDOG=1`` and a byte to the hardware watchdog, only while the liveness predicate holds
  (the same one ``/livez`` answers from).

On a clean stop: ``STOPPING=1`` and the hardware watchdog's magic close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sdnotify

from agent.health import Liveness
from agent.watchdog.hardware import HardwareWatchdog

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class State:
    ready: bool
    status: str  # one line for `systemctl status`
    stopping: bool = False


def systemd_watchdog_period(environ: Mapping[str, str]) -> float | None:
    """Half of ``WATCHDOG_USEC`` when systemd asked this process for pings, else None."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None


class Supervisor:
    def __init__(
        self,
        liveness: Callable[[], Liveness],
        state: Callable[[], State],
        *,
        tick_s: float,
        extend_timeout_s: float,
        hardware: HardwareWatchdog | None = None,
        notifier: sdnotify.SystemdNotifier | None = None,
    ) -> None:
        self._liveness = liveness
        self._state = state
        self.tick_s = tick_s
        self._extend_usec = int(extend_timeout_s * 1e6)
        self._hardware = hardware
        self._notifier = notifier or sdnotify.SystemdNotifier()
        self._ready_sent = False
        self._stopping_sent = False
        self._last_status = ""
        self._withholding = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._hardware is not None:
            self._hardware.open()
        self._task = asyncio.create_task(self._run(), name="supervisor")

    async def stop(self, clean: bool) -> None:
        """``clean``: every request finished; only then is the hardware watchdog disarmed."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._notifier.notify("STOPPING=1\nSTATUS=stopped" if not self._stopping_sent
                              else "STATUS=stopped")
        if self._hardware is not None:
            if clean:
                self._hardware.close_cleanly()
            else:
                log.error("unclean stop: leaving the hardware watchdog armed")
                self._hardware.abandon()

    async def _run(self) -> None:
        while True:
            self.tick()
            await asyncio.sleep(self.tick_s)

    def tick(self) -> None:
        state = self._state()
        messages = []
        if state.status != self._last_status:
            messages.append(f"STATUS={state.status}")
            self._last_status = state.status
        if state.stopping and not self._stopping_sent:
            messages.append("STOPPING=1")
            self._stopping_sent = True
        if state.ready and not self._ready_sent:
            messages.append("READY=1")
            self._ready_sent = True
        elif not self._ready_sent and not state.stopping:
            messages.append(f"EXTEND_TIMEOUT_USEC={self._extend_usec}")
        live = self._liveness()
        if live.live:
            messages.append("WATCHDOG=1")
            if self._hardware is not None:
                self._hardware.feed()
            if self._withholding:
                log.warning("healthy again: watchdog pings resume")
            self._withholding = False
        elif not self._withholding:
            log.error("not live: withholding watchdog pings", extra={"reasons": live.reasons})
            self._withholding = True
        if messages:
            self._notifier.notify("\n".join(messages))
