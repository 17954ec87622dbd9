"""Liveness: is the event loop turning, is no inference stuck, does every model still answer?

The event-loop probe is a task that sleeps a fixed interval and records when it woke; a blocked
loop stops those ticks. ``/livez`` and the watchdogs read the same predicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.settings import HealthSettings


@dataclass(frozen=True)
class Liveness:
    live: bool
    loop_lag_s: float
    longest_inference_s: float
    reasons: tuple[str, ...]

    def as_dict(self) -> dict[str, object]:
        return {
            "status": "live" if self.live else "not live",
            "loop_lag_s": round(self.loop_lag_s, 4),
            "longest_inference_s": round(self.longest_inference_s, 3),
            "reasons": list(self.reasons),
        }


class LoopMonitor:
    """Measures event-loop lag: how late each periodic wake-up comes."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last_tick = time.monotonic()
        self.last_lag_s = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="loop-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval_s)
            now = time.monotonic()
            self.last_lag_s = max(0.0, now - before - self.interval_s)
            self.last_tick = now

    def lag_s(self, now: float | None = None) -> float:
        """The worst of the last measured lag and the time since the last expected tick."""
        now = time.monotonic() if now is None else now
        overdue = now - self.last_tick - self.interval_s
        return max(self.last_lag_s, overdue, 0.0)


def check_liveness(
    settings: HealthSettings,
    monitor: LoopMonitor,
    longest_run_s: Callable[[], float],
    silent_models: Callable[[float], dict[str, float]],
) -> Liveness:
    """The one health predicate: ``/livez``, systemd's watchdog and the hardware watchdog."""
    lag = monitor.lag_s()
    running = longest_run_s()
    reasons = []
    for name, silent_s in silent_models(settings.max_silence_s).items():
        reasons.append(f"model {name}: no inference came back for {silent_s:.1f}s")
    if lag > settings.max_loop_lag_s:
        reasons.append(f"event loop lag {lag:.3f}s > {settings.max_loop_lag_s}s")
    if running > settings.max_inference_s:
        reasons.append(f"inference running {running:.1f}s > {settings.max_inference_s}s")
    return Liveness(not reasons, lag, running, tuple(reasons))
