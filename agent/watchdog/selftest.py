"""Self-test inferences: an idle model still has to prove, now and then, that it answers.

Real traffic is proof enough; a model with no batch back for ``interval_s`` gets one synthetic
input through its own queue and inference thread. A wedged session never answers it, and the
liveness predicate (``max_silence_s``) turns false: that is how a wedged GPU context with no
traffic on it is caught. At most one self-test per model is in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from agent.service import ModelService

log = logging.getLogger(__name__)


class SelfTests:
    def __init__(self, service: ModelService, interval_s: float) -> None:
        self._service = service
        self._interval_s = interval_s
        self._in_flight: dict[str, asyncio.Task[bool]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="self-tests")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._in_flight.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s / 2)
            self.kick()

    def kick(self) -> None:
        now = time.monotonic()
        for record in self._service.active():
            name = record.model
            if now - record.batcher.last_completed_at < self._interval_s:
                continue
            previous = self._in_flight.get(name)
            if previous is not None and not previous.done():
                continue  # still waiting for the last one: it is the model that is late
            task = asyncio.create_task(self._service.self_test(name), name=f"self-test-{name}")
            task.add_done_callback(_log_failure)
            self._in_flight[name] = task


def _log_failure(task: asyncio.Task[bool]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("self-test inference failed", extra={"error": repr(task.exception())})
