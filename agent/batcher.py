"""Per-model micro-batching with a bounded queue.

A request first *reserves* a slot (``max_queue`` slots; none left -> ``QueueFullError`` at once,
so overload is shed before any work is done), is pre-processed, then waits in the queue. One
dispatcher task forms batches: it waits for an idle model instance, takes up to ``max_batch``
queued items (waiting at most ``max_delay`` for company), drops the ones whose deadline has
passed, and runs the batch on that instance's own thread. The slot is freed when the item leaves
the queue, so queue depth = reserved slots = work admitted but not yet running.

``max_queue`` bounds the queue; when the model is overloaded (``agent.admission``: a standing
queue that filled up, not cameras in a closed loop waiting their turn) fewer are admitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from agent.admission import Admission
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


class Ticket:
    """A request admitted to this batcher, its body still arriving: it may still reserve its
    slot here after a swap has started draining the batcher (the answer comes from the version
    it was admitted to), and the drain waits for it. Released exactly once (reserving uses it)."""

    __slots__ = ("_batcher", "_held")

    def __init__(self, batcher: Batcher[Any, Any]) -> None:
        self._batcher = batcher
        self._held = True
        batcher._tickets += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self._batcher._tickets -= 1


@dataclass
class _Item(Generic[In, Out]):
    payload: In
    future: asyncio.Future[tuple[Out, RunTiming]]
    enqueued_at: float
    deadline: float | None
    slot: Slot


@dataclass(eq=False)  # compared and hashed by identity
class Instance(Generic[In, Out]):
    """One model session and the single thread that runs it."""

    run: Callable[[list[In]], Sequence[Out]]
    executor: ThreadPoolExecutor
    running_since: float | None = field(default=None)
    running_items: int = 0  # the size of the batch running now
    retired: bool = False  # replaced (:meth:`Batcher.relayout`): ends after its run


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
        self.admission = Admission(name, standing_queue_s)
        self._instances = instances
        self._items: deque[_Item[In, Out]] = deque()
        self._nonempty = asyncio.Event()
        self._idle: asyncio.Queue[Instance[In, Out]] = asyncio.Queue()
        for inst in instances:
            self._idle.put_nowait(inst)
        self._reserved = 0
        self._tickets = 0  # admitted, not yet reserved (bodies still arriving)
        self._on_depth = on_depth  # sees every new depth: a window maximum misses no spike
        self._closing = False
        self._runs: set[asyncio.Task[None]] = set()
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"batcher-{name}")
        self.failed_batches = 0
        self.expired = 0
        self.relayouts = 0
        self._retired: set[Instance[In, Out]] = set()  # replaced, their threads not yet ended
        # Sees every batch as it starts, and whether it was contended (another run going, or
        # its oldest item had to wait for an instance): the thread layout's signal.
        self.on_batch_start: Callable[[float, bool], None] | None = None
        self.on_close: Callable[[], Awaitable[None]] | None = None
        self.on_retired: Callable[[], None] | None = None  # the last replaced instance ended
        # How the instances use the cores, for /v1/models (agent.thread_layout keeps it true).
        self.threads: dict[str, Any] = {"layout": "fixed", "instances": len(instances)}
        # When a batch last came back from the model: the proof, for liveness, that it answers.
        self.last_completed_at = time.monotonic()

    # -- admission -------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Requests admitted and not yet running (pre-processing or queued)."""
        return self._reserved

    def admit(self) -> Ticket:
        """Admission before the body is read: raises what :meth:`reserve` would raise now."""
        self.check_room()
        return Ticket(self)

    def reserve(self, ticket: Ticket | None = None) -> Slot:
        """A slot in the queue; with a ``ticket`` from this batcher, also while it drains."""
        admitted = ticket is not None and ticket._batcher is self and ticket._held
        self.check_room(admitted)
        if ticket is not None:
            ticket.release()
        self._reserved += 1
        if self._on_depth is not None:
            self._on_depth(self._reserved)
        return Slot(self)

    @property
    def overloaded(self) -> bool:
        return self.admission.overloaded

    @property
    def overload_episodes(self) -> int:
        return self.admission.episodes

    def check_room(self, admitted: bool = False) -> None:
        """Raise the error :meth:`reserve` would raise now, without reserving. ``admitted``:
        for a request admitted earlier, which a drain still takes."""
        if self._closing and not admitted:
            raise DrainingError(f"model {self.name!r} is shutting down")
        admission = self.admission
        limit = admission.limit(self.max_queue, len(self._instances), self.max_batch)
        detail: dict[str, Any] = {
            "max_queue": self.max_queue, "overloaded": admission.overloaded, "limit": limit
        }
        now = time.monotonic()
        if self._reserved >= limit:
            admission.refused(now, queue_full=self._reserved >= self.max_queue)
            detail["overloaded"] = admission.overloaded
            raise QueueFullError(f"model {self.name!r} queue is full", detail)
        if admission.overloaded:
            start, window = self.expected_start_s(now), admission.window_s()
            if start is not None and window is not None and start > window:
                admission.refused(now, queue_full=False)
                detail["expected_start_ms"] = round(1000 * start, 1)
                raise QueueFullError(
                    f"model {self.name!r} is overloaded: no instance is free in time", detail
                )

    def expected_start_s(self, now: float) -> float | None:
        """Seconds until a request admitted now would start running."""
        return self.admission.expected_start_s(
            now,
            ((inst.running_since, inst.running_items) for inst in self._instances),
            len(self._instances),
            self._reserved,
        )

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
        self.admission.observe_pre(now - slot.reserved_at)
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
    def instances(self) -> int:
        return len(self._instances)

    def relayout(self, instances: list[Instance[In, Out]]) -> None:
        """Serve on ``instances`` from now on: the current ones finish the batch they run (if
        any) and end, so no request waits for the change or is lost to it."""
        if not instances:
            raise ValueError("a batcher needs at least one instance")
        if self._closing:
            for inst in instances:
                inst.executor.shutdown(wait=False)
            return
        for inst in self._instances:
            inst.retired = True
            self._retired.add(inst)
        self._instances = instances
        for inst in instances:
            self._idle.put_nowait(inst)
        self.relayouts += 1

    @property
    def busy(self) -> bool:
        return bool(self._items) or any(i.running_since is not None for i in self._instances)

    # -- dispatch --------------------------------------------------------------------------
    async def _dispatch(self) -> None:
        while True:
            instance = await self._idle.get()
            if instance.retired:  # idle when it was replaced: nothing to finish
                self._end(instance)
                continue
            batch = await self._collect()  # replaced meanwhile: it still runs this batch
            if not batch:
                self._idle.put_nowait(instance)
                continue
            task = asyncio.create_task(self._run(instance, batch))
            self._runs.add(task)
            task.add_done_callback(self._runs.discard)

    async def _take(self, timeout: float | None) -> _Item[In, Out] | None:
        if not self._items and not self._reserved:
            self.admission.idle(time.monotonic())
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
        waited = now - batch[0].enqueued_at
        self.admission.batch_started(waited, now)
        if self.on_batch_start is not None:
            run_s = self.admission.run_s
            others = any(i.running_since is not None for i in self._instances)
            self.on_batch_start(
                now, others or bool(self._items) or (run_s is not None and waited > run_s / 4)
            )
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

    async def _run(self, instance: Instance[In, Out], batch: list[_Item[In, Out]]) -> None:
        instance.running_since = time.monotonic()
        instance.running_items = len(batch)
        try:
            await self._attempt(instance, batch)
        finally:
            instance.running_since = None
            if instance.retired:
                self._end(instance)
            else:
                self._idle.put_nowait(instance)

    def _end(self, instance: Instance[In, Out]) -> None:
        """A replaced instance has nothing left to run: its thread ends."""
        self._retired.discard(instance)
        instance.executor.shutdown(wait=False)
        if not self._retired and self.on_retired is not None:
            self.on_retired()

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
            self.admission.observe_run(ran, len(batch))
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
        if self.on_close is not None:
            await self.on_close()
        end = time.monotonic() + timeout
        # Reserved slots too: a request still pre-processing will submit in a moment; and
        # admitted ones whose body is still arriving (bounded by limits.body_timeout_s).
        while (self._items or self._runs or self._reserved or self._tickets) and (
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
        for inst in [*self._instances, *self._retired]:
            # A stuck run cannot be interrupted: do not wait for its thread, or exit would hang.
            inst.executor.shutdown(wait=not stuck, cancel_futures=True)
        if stuck:
            log.error("inference still running at shutdown", extra={"model": self.name})
        return not stuck
