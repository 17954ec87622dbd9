"""Shadow runs: a sample of live requests also runs on a second loaded version of a model.

While a second version is loaded beside the active one (the previous version during
``bake_s`` after a swap, :mod:`agent.models.bake`), a sample of the live requests
(``percent``, at most ``max_per_s``) is run on it too, after the live answer is computed and
without delaying it: the live request starts the shadow run as a separate task and answers.
A sample runs only when the shadow version's queue is idle and the live version is not
overloaded; else it is dropped (and counted). The two answers are compared
(:mod:`inference.agreement`) and the agreement over the last samples is what the metrics
and ``/v1/models`` report. With no second version loaded nothing here runs at all.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.records import VersionRecord

log = logging.getLogger(__name__)

WINDOW = 200  # agreement is the mean over the last this many samples


@dataclass(frozen=True)
class ShadowPolicy:
    percent: float = 10.0  # of live requests, sampled at random
    max_per_s: float = 2.0  # and at most this many a second (a token bucket, burst 1)


class Shadow:
    """The second version of one model and how far it agrees with the live answers."""

    def __init__(self, record: VersionRecord, policy: ShadowPolicy,
                 window: int = WINDOW) -> None:
        self.record = record  # the shadow version (its own runner and queue)
        self.policy = policy
        self.samples = 0  # compared
        self.dropped = 0  # sampled, but not run: its queue busy, the live model overloaded
        self._window: deque[float] = deque(maxlen=window)
        self._tokens = 1.0
        self._refilled = time.monotonic()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def agreement(self) -> float | None:
        return sum(self._window) / len(self._window) if self._window else None

    @property
    def window_samples(self) -> int:
        return len(self._window)

    def take(self, live: VersionRecord) -> bool:
        """Whether this live request is sampled and may run on the shadow now."""
        if live.batcher is self.record.batcher or random.random() * 100 >= self.policy.percent:
            return False
        now = time.monotonic()
        self._tokens = min(1.0, self._tokens + (now - self._refilled) * self.policy.max_per_s)
        self._refilled = now
        if self._tokens < 1.0:
            return False  # over the rate: not a sample at all
        shadow = self.record.batcher
        if shadow.busy or shadow.depth > 0 or live.batcher.overloaded:
            self.dropped += 1
            return False
        self._tokens -= 1.0
        return True

    def run(self, compare: Callable[[], Awaitable[float]]) -> None:
        """Run ``compare`` (the shadow's answer against the live one) in the background."""
        task = asyncio.get_running_loop().create_task(self._sample(compare))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sample(self, compare: Callable[[], Awaitable[float]]) -> None:
        try:
            value = await compare()
        except Exception as exc:  # its queue refused or drained it: a dropped sample
            self.dropped += 1
            log.debug("shadow sample dropped", extra={"model": self.record.model,
                                                      "error": str(exc)})
            return
        self._window.append(value)
        self.samples += 1

    def describe(self) -> dict[str, Any]:
        agreement = self.agreement
        return {
            "version": self.record.version,
            "digest": f"sha256:{self.record.digest}",
            "percent": self.policy.percent,
            "max_per_s": self.policy.max_per_s,
            "samples": self.samples,
            "dropped": self.dropped,
            "agreement": None if agreement is None else round(agreement, 4),
            "queue_depth": self.record.batcher.depth,
        }
