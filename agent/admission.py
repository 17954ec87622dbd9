"""When a model's queue is overloaded, and what it admits then: the batcher's admission rule.

``max_queue`` absorbs bursts and closed loops alike. A camera in a closed loop posts its next
frame when the answer to the last one arrives, so N such cameras never hold more than N requests
in the daemon: with N <= ``max_queue`` none is ever refused, however long each waits (a busy
CPU, a slow model). Their queue *stands* (every batch waited longer than a run), but that is
the clients pacing themselves, not overload, and refusing them only makes a camera that retries
at once hammer the node.

Overload is demand the queue cannot hold: frames arriving faster than they are served, so the
queue fills and arrivals are refused at ``max_queue``. It is recognised when both hold (the
standing test is CoDel's): for ``standing_queue_s`` every batch has waited longer than a batch
takes to run, *and* within that time a request found the queue full. Then a full queue only
makes every accepted request late, so a request is admitted only when it should start running
about when its pre-processing is done: its expected start (the first instance free, plus the
work already admitted) within the pre-processing time plus a quarter of a frame's run. That
keeps each instance fed and an accepted request close to its unloaded latency; the rest are
shed at once. The overload ends when an instance finds no work at all and nobody was turned
away while a frame would have run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


class Admission:
    """Service-time estimates and the overload state of one batcher (event-loop only)."""

    def __init__(self, name: str, standing_queue_s: float) -> None:
        self.name = name
        self.standing_queue_s = standing_queue_s  # 0: never limit below max_queue
        self.overloaded = False
        self.episodes = 0
        self.run_s: float | None = None  # moving average of one batch's run time
        self.item_s: float | None = None  # ... of a run's time per item in its batch
        self.pre_s: float | None = None  # ... of reserve -> submit (pre-processing)
        self._refused_at: float | None = None  # when a request was last turned away
        self._full_at: float | None = None  # when one last found the queue at max_queue
        self._standing_since: float | None = None  # batches have waited > run_s since then

    # -- what the batcher measures ---------------------------------------------------------
    def observe_pre(self, pre_s: float) -> None:
        self.pre_s = pre_s if self.pre_s is None else 0.8 * self.pre_s + 0.2 * pre_s

    def observe_run(self, ran_s: float, items: int) -> None:
        self.run_s = ran_s if self.run_s is None else 0.8 * self.run_s + 0.2 * ran_s
        per_item = ran_s / items
        self.item_s = per_item if self.item_s is None else 0.8 * self.item_s + 0.2 * per_item

    def batch_started(self, waited_s: float, now: float) -> None:
        """CoDel's test, on the oldest item of each batch as it starts."""
        if not self.standing_queue_s or self.run_s is None or waited_s <= self.run_s:
            self._standing_since = None
            return
        if self._standing_since is None:
            self._standing_since = now
        self._maybe_overloaded(now, waited_s)

    def refused(self, now: float, queue_full: bool) -> None:
        """A request was turned away; ``queue_full``: for want of room under ``max_queue``."""
        self._refused_at = now
        if queue_full:
            self._full_at = now
            self._maybe_overloaded(now, None)

    def idle(self, now: float) -> None:
        """An instance found no work anywhere (nothing queued, nothing pre-processing)."""
        if self.overloaded and not self._refused_lately(now):
            # Demand is below capacity again: nobody was turned away while a frame would run.
            self.overloaded = False
            self._standing_since = None
            log.info("model no longer overloaded", extra={"model": self.name})

    # -- what it decides -------------------------------------------------------------------
    def limit(self, max_queue: int, instances: int, max_batch: int) -> int:
        """How many may be admitted and not yet running: while overloaded, a batch per
        instance at most."""
        return min(max_queue, instances * max_batch) if self.overloaded else max_queue

    def expected_start_s(
        self, now: float, running: Iterable[tuple[float | None, int]], instances: int,
        reserved: int,
    ) -> float | None:
        """Seconds until a request admitted now would start running: the first instance free
        (``running``: each instance's run start and batch size), plus the admitted work ahead
        of it spread over the instances."""
        if self.item_s is None:
            return None
        # Per item, not per batch: batches shrink once admission is limited, and an average
        # of the earlier, larger ones would see every instance busy for far too long.
        item_s = self.item_s
        free_in = min(
            max(0.0, since + items * item_s - now) if since is not None else 0.0
            for since, items in running
        )
        return free_in + reserved * item_s / instances

    def window_s(self) -> float | None:
        """While overloaded, admit what would start within this: its pre-processing time (the
        wait hides behind it) and a quarter of a frame's run (slack, so instances stay fed)."""
        if self.pre_s is None or self.item_s is None:
            return None
        return self.pre_s + self.item_s / 4

    # -- internals -------------------------------------------------------------------------
    def _refused_lately(self, now: float) -> bool:
        return self._refused_at is not None and now - self._refused_at < (self.item_s or 0.0)

    def _maybe_overloaded(self, now: float, waited_s: float | None) -> None:
        if self.overloaded or self._standing_since is None:
            return
        standing = now - self._standing_since >= self.standing_queue_s
        # The queue filled up while it stood: arrivals beyond what it can hold, not a loop
        # of clients waiting their turn.
        full_lately = self._full_at is not None and now - self._full_at <= self.standing_queue_s
        if standing and full_lately:
            self.overloaded = True
            self.episodes += 1
            log.warning(
                "model overloaded: a standing queue that filled up; admitting only requests "
                "due to start",
                extra={"model": self.name,
                       "waited_ms": None if waited_s is None else round(waited_s * 1000, 1)},
            )
