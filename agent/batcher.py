"""Per-model micro-batching with a bounded queue.

A request first *reserves* a slot (``max_queue`` slots; none left -> ``QueueFullError`` at once,
so overload is shed before any work is done), is pre-processed, then waits in the queue. One
dispatcher task forms batches: it waits for an idle model instance, takes up to ``max_batch``
queued items (waiting at most ``max_delay`` for company), drops the ones whose deadline has
passed, and runs the batch on that instance's own thread. The slot is freed when the item leaves
the queue, so queue depth = reserved slots = work admitted but not yet running.

``max_queue`` absorbs bursts. A *standing* queue is another matter (the idea is CoDel's): when
every batch started for ``standing_queue_s`` has waited longer than one batch's run time, the
model is overloaded, not bursting, and a full queue only makes every accepted request late. Then
the batcher admits a request only when it should start running about when its pre-processing is
done: its expected start (the first instance free, plus the work already admitted) within the
pre-processing time plus a quarter of a frame's run. That keeps each instance fed and an accepted
request close to its unloaded latency; the rest are shed at once. The overload ends when an
instance finds no work at all and nobody was turned away while a frame would have run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from agent.errors import (
    DeadlineExceededError,
    DrainingError,
    InferenceFailedError,
    QueueFullError,
)

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(frozen=True)
class RunTiming:
    queue_s: float  # enqueue -> its batch started
    inference_s: float  # the batch's run
    batch_size: int


class Slot:
    """A reserved place in the queue; released exactly once."""

    __slots__ = ("_batcher", "_held", "reserved_at")

    def __init__(self, batcher: Batcher[Any, Any]) -> None:
        self._batcher = batcher
        self._held = True
        self.reserved_at = time.monotonic()

    def release(self) -> None:
        if self._held:
            self._held = False
            self._batcher._reserved -= 1


@dataclass
class _Item(Generic[In, Out]):
    payload: In
    future: asyncio.Future[tuple[Out, RunTiming]]
    enqueued_at: float
    deadline: float | None
    slot: Slot


@dataclass
class Instance(Generic[In, Out]):
    """One model session and the single thread that runs it."""

    run: Callable[[list[In]], Sequence[Out]]
    executor: ThreadPoolExecutor
    running_since: float | None = field(default=None)
    running_items: int = 0  # the size of the batch running now


class Batcher(Generic[In, Out]):
    def __init__(
        self,
        name: str,
        instances: list[Instance[In, Out]],
        *,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        standing_queue_s: float = 0.0,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        if not instances:
            raise ValueError("a batcher needs at least one instance")
        self.name = name
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.standing_queue_s = standing_queue_s  # 0: never limit below max_queue
        self._instances = instances
        self._items: deque[_Item[In, Out]] = deque()
        self._nonempty = asyncio.Event()
        self._idle: asyncio.Queue[Instance[In, Out]] = asyncio.Queue()
        for inst in instances:
            self._idle.put_nowait(inst)
        self._reserved = 0
        self._on_depth = on_depth  # sees every new depth: a window maximum misses no spike
        self._closing = False
        self._runs: set[asyncio.Task[None]] = set()
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"batcher-{name}")
        self.failed_batches = 0
        self.expired = 0
        self.overloaded = False
        self.overload_episodes = 0
        self._run_s: float | None = None  # moving average of one batch's run time
        self._item_s: float | None = None  # ... of a run's time per item in its batch
        self._pre_s: float | None = None  # ... of reserve -> submit (pre-processing)
        self._refused_at: float | None = None  # when overload admission last turned one away
        self._waiting_since: float | None = None  # batches have waited > _run_s since then
        # When a batch last came back from the model: the proof, for liveness, that it answers.
        self.last_completed_at = time.monotonic()

    # -- admission -------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Requests admitted and not yet running (pre-processing or queued)."""
        return self._reserved

    def reserve(self) -> Slot:
        self.check_room()
        self._reserved += 1
        if self._on_depth is not None:
            self._on_depth(self._reserved)
        return Slot(self)

    def check_room(self) -> None:
        """Raise the error :meth:`reserve` would raise now, without reserving."""
        if self._closing:
            raise DrainingError(f"model {self.name!r} is shutting down")
        limit = self.max_queue
        if self.overloaded:  # at most a batch waiting per instance, and only if due to start
            limit = min(limit, len(self._instances) * self.max_batch)
        detail: dict[str, Any] = {
            "max_queue": self.max_queue, "overloaded": self.overloaded, "limit": limit
        }
        now = time.monotonic()
        if self._reserved >= limit:
            if self.overloaded:
                self._refused_at = now
            raise QueueFullError(f"model {self.name!r} queue is full", detail)
        if self.overloaded:
            start, window = self.expected_start_s(now), self.admission_window_s()
            if start is not None and window is not None and start > window:
                self._refused_at = now
                detail["expected_start_ms"] = round(1000 * start, 1)
                raise QueueFullError(
                    f"model {self.name!r} is overloaded: no instance is free in time", detail
                )

    def expected_start_s(self, now: float) -> float | None:
        """Seconds until a request admitted now would start running, from the moving averages:
        the first instance free, plus the admitted work ahead of it spread over the instances."""
        if self._item_s is None:
            return None
        # Per item, not per batch: batches shrink once admission is limited, and an average
        # of the earlier, larger ones would see every instance busy for far too long.
        free_in = min(
            max(0.0, inst.running_since + inst.running_items * self._item_s - now)
            if inst.running_since is not None
            else 0.0
            for inst in self._instances
        )
        return free_in + self._reserved * self._item_s / len(self._instances)

    def admission_window_s(self) -> float | None:
        """While overloaded, admit what would start within this: its pre-processing time (the
        wait hides behind it) and a quarter of a frame's run (slack, so instances stay fed)."""
        if self._pre_s is None or self._item_s is None:
            return None
        return self._pre_s + self._item_s / 4

    async def submit(
        self, slot: Slot, payload: In, deadline: float | None = None
    ) -> tuple[Out, RunTiming]:
        """Queue ``payload`` under its reserved ``slot`` and wait for its result."""
        if deadline is not None and time.monotonic() >= deadline:
            slot.release()
            self.expired += 1
            raise DeadlineExceededError("deadline passed before inference started")
        future: asyncio.Future[tuple[Out, RunTiming]] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        pre = now - slot.reserved_at
        self._pre_s = pre if self._pre_s is None else 0.8 * self._pre_s + 0.2 * pre
        self._items.append(_Item(payload, future, now, deadline, slot))
        self._nonempty.set()
        try:
            return await future
        finally:
            # A failed future keeps its exception, whose traceback keeps this frame, which keeps
            # the future: a cycle only the cyclic GC frees, late, with the input tensor in it.
            # Under overload (hundreds of 504s a second) that was memory growing by the minute.
            del future, payload

    # -- health ----------------------------------------------------------------------------
    def longest_run_s(self, now: float | None = None) -> float:
        """How long the oldest batch still running has been running (0 when idle)."""
        now = time.monotonic() if now is None else now
        started = [i.running_since for i in self._instances if i.running_since is not None]
        return now - min(started) if started else 0.0

    @property
    def busy(self) -> bool:
        return bool(self._items) or any(i.running_since is not None for i in self._instances)

    # -- dispatch --------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            instance = await self._idle.get()
            batch = await self._collect()
            if not batch:
                self._idle.put_nowait(instance)
                continue
            task = asyncio.create_task(self._run(instance, batch))
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    async def _take(self, timeout: float | None) -> _Item[In, Out] | None:
        idle = not self._items and not self._reserved
        if idle and self.overloaded and not self._refused_lately():
            # An instance with no work anywhere, and nobody turned away while a frame would
            # have run: demand is below capacity again.
            self.overloaded = False
            self._waiting_since = None
            log.info("model no longer overloaded", extra={"model": self.name})
        while not self._items:
            self._nonempty.clear()
            try:
                await asyncio.wait_for(self._nonempty.wait(), timeout)
            except asyncio.TimeoutError:
                return None
        return self._items.popleft()

    async def _collect(self) -> list[_Item[In, Out]]:
        first = await self._take(None)
        assert first is not None
        batch = [first]
        close_at = time.monotonic() + self.max_delay_s
        while len(batch) < self.max_batch:
            if self._items:
                batch.append(self._items.popleft())
                continue
            remaining = close_at - time.monotonic()
            if remaining <= 0:
                break
            item = await self._take(remaining)
            if item is None:
                break
            batch.append(item)
        now = time.monotonic()
        self._watch_standing(now - batch[0].enqueued_at, now)
        live = []
        for item in batch:
            item.slot.release()
            if item.future.done():  # the client went away
                continue
            if item.deadline is not None and now >= item.deadline:
                self.expired += 1
                item.future.set_exception(
                    DeadlineExceededError("deadline passed while queued; inference not run")
                )
                continue
            live.append(item)
        return live

    def _refused_lately(self) -> bool:
        return self._refused_at is not None and (
            time.monotonic() - self._refused_at < (self._item_s or 0.0)
        )

    def _watch_standing(self, waited_s: float, now: float) -> None:
        """CoDel's test: the oldest item of every batch for ``standing_queue_s`` waited longer
        than a batch takes to run."""
        if not self.standing_queue_s or self._run_s is None or waited_s <= self._run_s:
            self._waiting_since = None
            return
        if self._waiting_since is None:
            self._waiting_since = now
        elif now - self._waiting_since >= self.standing_queue_s and not self.overloaded:
            self.overloaded = True
            self.overload_episodes += 1
            log.warning(
                "model overloaded: a standing queue; admitting only requests due to start",
                extra={"model": self.name, "waited_ms": round(waited_s * 1000, 1)},
            )

    async def _run(self, instance: Instance[In, Out], batch: list[_Item[In, Out]]) -> None:
        instance.running_since = time.monotonic()
        instance.running_items = len(batch)
        try:
            await self._attempt(instance, batch)
        finally:
            instance.running_since = None
            self._idle.put_nowait(instance)

    async def _attempt(self, instance: Instance[In, Out], batch: list[_Item[In, Out]]) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        try:
            outputs = await loop.run_in_executor(
                instance.executor, instance.run, [item.payload for item in batch]
            )
            if len(outputs) != len(batch):
                raise RuntimeError(f"model returned {len(outputs)} results for {len(batch)}")
        except Exception as exc:
            self.failed_batches += 1
            log.error(
                "batch failed", extra={"model": self.name, "batch": len(batch), "error": repr(exc)}
            )
            if len(batch) > 1:
                # One poisoned input (a broken camera's frame) must not fail its neighbours:
                # run each alone, so only the culprit gets the error.
                for item in batch:
                    if not item.future.done():
                        await self._attempt(instance, [item])
                return
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(
                        InferenceFailedError(
                            f"model {self.name!r} failed on this input",
                            {"error": type(exc).__name__},
                        )
                    )
        else:
            self.last_completed_at = time.monotonic()
            ran = self.last_completed_at - started
            self._run_s = ran if self._run_s is None else 0.8 * self._run_s + 0.2 * ran
            per_item = ran / len(batch)
            self._item_s = per_item if self._item_s is None else 0.8 * self._item_s + 0.2 * per_item
            for item, out in zip(batch, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(
                        (out, RunTiming(started - item.enqueued_at, ran, len(batch)))
                    )

    # -- shutdown --------------------------------------------------------------------------
    async def close(self, timeout: float) -> bool:
        """Refuse new work, let queued and running batches finish (up to ``timeout``), stop.

        Returns False when a run was still going at the timeout (a wedged session): its thread
        cannot be interrupted, so the caller should not wait for it at exit."""
        self._closing = True
        end = time.monotonic() + timeout
        # Reserved slots too: a request still pre-processing will submit in a moment.
        while (self._items or self._runs or self._reserved) and (
            remaining := end - time.monotonic()
        ) > 0:
            if self._runs:
                await asyncio.wait(set(self._runs), timeout=remaining)
            else:  # queued items: the dispatcher is about to start them
                await asyncio.sleep(0.005)
        self._dispatcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._dispatcher
        for item in self._items:
            if not item.future.done():
                item.future.set_exception(DrainingError("shut down before inference ran"))
        self._items.clear()
        stuck = bool(self._runs)
        for inst in self._instances:
            # A stuck run cannot be interrupted: do not wait for its thread, or exit would hang.
            inst.executor.shutdown(wait=not stuck, cancel_futures=True)
        if stuck:
            log.error("inference still running at shutdown", extra={"model": self.name})
        return not stuck
