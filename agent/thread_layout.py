"""How a CPU model uses the cores: one wide session for one camera, one thread per core for many,
chosen by the load the model sees (``runtime.thread_layout``).

On a CPU no fixed layout is best for both. One session whose runs use every core (*wide*) gives
one camera its lowest latency, but two runs side by side on it fight over the same cores (ONNX
Runtime splits each operator across its pool, and one slow thread holds up the others): 0.8-0.9x
the frames/s of *narrow*, one single-threaded run per core, which in turn takes 1.7x longer for
a lone frame. Both layouts are one session (the narrow one is called from one inference thread
per core at once; ONNX Runtime's ``run`` is thread-safe), so the memory is one model's, plus the
activations of the runs in flight.

:class:`LayoutPolicy` watches each batch as it starts: *contended* when another run is going or
the frame had to wait for an instance. Mostly contended batches turn a wide model narrow; a
narrow model that saw no contention for a while turns wide again. The switch builds the other
session beside the serving one and swaps it in with no gap (:class:`AdaptiveLayout`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from agent.batcher import Batcher, Instance
from agent.malloc import release_free_memory
from inference import SessionConfig
from inference.cpu import lower_thread_priority
from inference.kinds import Servable
from inference.session import rebuild_session

log = logging.getLogger(__name__)

ADAPTIVE, WIDE, NARROW, FIXED = "adaptive", "wide", "narrow", "fixed"
RETRY_FAILED_SWITCH_S = 300.0  # building a session that failed (memory?) is not retried sooner
THREAD_LAYOUTS = (ADAPTIVE, WIDE, NARROW, FIXED)


@dataclass(frozen=True)
class Layout:
    name: str  # WIDE or NARROW
    instances: int  # inference threads, all calling the one session
    intra_op_threads: int  # ONNX Runtime threads per run

    def describe(self) -> dict[str, Any]:
        return {"layout": self.name, "instances": self.instances,
                "intra_op_threads": self.intra_op_threads}


def cpu_layouts(cores: int) -> dict[str, Layout]:
    return {WIDE: Layout(WIDE, 1, cores), NARROW: Layout(NARROW, cores, 1)}


class LayoutPolicy:
    """When to switch (event-loop only; no I/O, so it is tested on its own).

    Wide -> narrow when ``narrow_after`` of the last ``window`` batches were contended. Narrow
    -> wide when none was for ``wide_after_s`` and at least ``window`` * 2 batches. A switch
    forgets the history, so each layout is judged on what it saw itself."""

    def __init__(self, current: str, *, window: int = 8, narrow_after: int = 6,
                 wide_after_s: float = 10.0) -> None:
        self.current = current
        self.window = window
        self.narrow_after = narrow_after
        self.wide_after_s = wide_after_s
        self._recent: deque[bool] = deque(maxlen=window)
        self._quiet_since: float | None = None
        self._quiet_batches = 0

    def observe(self, now: float, contended: bool) -> str | None:
        """A batch started; the layout to switch to, or None."""
        self._recent.append(contended)
        if contended:
            self._quiet_since, self._quiet_batches = None, 0
        else:
            if self._quiet_since is None:
                self._quiet_since = now
            self._quiet_batches += 1
        if self.current == WIDE and sum(self._recent) >= self.narrow_after:
            return NARROW
        if (
            self.current == NARROW
            and self._quiet_since is not None
            and now - self._quiet_since >= self.wide_after_s
            and self._quiet_batches >= 2 * self.window
        ):
            return WIDE
        return None

    def switched(self, to: str) -> None:
        self.current = to
        self._recent.clear()
        self._quiet_since, self._quiet_batches = None, 0


def inference_executor(model: str, i: int, nice: int) -> ThreadPoolExecutor:
    """The one thread that runs (and creates: its pool threads inherit the lowered priority)
    a model's session for one instance."""
    return ThreadPoolExecutor(
        1, thread_name_prefix=f"infer-{model}-{i}", initializer=lower_thread_priority,
        initargs=(nice,),
    )


class AdaptiveLayout:
    """Switches one model's batcher between the wide and the narrow layout as
    :class:`LayoutPolicy` says: the other session is built and warmed up on a new inference
    thread while the current one serves, then the batcher takes the new instances and the old
    ones retire after their runs. ``fixed`` pins ``layout`` (no policy)."""

    def __init__(self, model: str, runner: Servable, config: SessionConfig, layout: Layout,
                 cores: int, nice: int, adaptive: bool) -> None:
        self.model = model
        self.runner = runner
        self.config = config
        self.layout = layout
        self.layouts = cpu_layouts(cores)
        self.nice = nice
        self.policy = LayoutPolicy(layout.name) if adaptive else None
        self.batcher: Batcher[Any, Any] | None = None
        self._switching: asyncio.Task[None] | None = None
        self._failed_at: float | None = None  # a failed switch is not tried again for a while

    def instances(self, first: ThreadPoolExecutor | None = None) -> list[Instance[Any, Any]]:
        """The current layout's instances; ``first``: the thread that built the session."""
        executors = [first] if first is not None else []
        executors += [inference_executor(self.model, i, self.nice)
                      for i in range(len(executors), self.layout.instances)]
        return [Instance(run=self.runner.infer, executor=ex) for ex in executors]

    def attach(self, batcher: Batcher[Any, Any]) -> None:
        self.batcher = batcher
        batcher.threads = self.layout.describe()
        batcher.on_close = self.close
        batcher.on_retired = self._release_memory
        if self.policy is not None:
            batcher.on_batch_start = self.on_batch_start

    def on_batch_start(self, now: float, contended: bool) -> None:
        if self.policy is None or self._switching is not None:
            return
        if self._failed_at is not None and now - self._failed_at < RETRY_FAILED_SWITCH_S:
            return
        to = self.policy.observe(now, contended)
        if to is not None:
            self._switching = asyncio.create_task(self._switch(self.layouts[to]),
                                                  name=f"relayout-{self.model}")

    async def _switch(self, to: Layout) -> None:
        assert self.batcher is not None
        assert self.policy is not None
        config = dataclasses.replace(self.config, intra_op_threads=to.intra_op_threads)
        builder = inference_executor(self.model, 0, self.nice)
        loop = asyncio.get_running_loop()
        try:
            loaded = await loop.run_in_executor(builder, rebuild_session, self.runner.loaded,
                                                config)
            await loop.run_in_executor(builder, self.runner.use_session, loaded)
        except asyncio.CancelledError:
            builder.shutdown(wait=False)
            raise
        except Exception as exc:  # keep serving on the current layout
            builder.shutdown(wait=False)
            log.error("thread layout switch failed",
                      extra={"model": self.model, "to": to.name, "error": repr(exc)})
            self.policy.switched(self.layout.name)  # judge afresh before trying again
            self._failed_at = time.monotonic()
            return
        finally:
            self._switching = None
        came_from, self.layout = self.layout, to
        self.batcher.relayout(self.instances(builder))
        self.batcher.threads = to.describe()
        self.policy.switched(to.name)
        log.info("thread layout switched", extra={
            "model": self.model, "from": came_from.name, **to.describe()})

    def _release_memory(self) -> None:
        """The replaced instances have ended, and with their last run the replaced session:
        hand its memory back (off the event loop: trimming walks the heap)."""
        asyncio.get_running_loop().run_in_executor(None, release_free_memory)

    async def close(self) -> None:
        if self._switching is not None:
            self._switching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._switching


def choose_layout(setting: str, provider: str, cores: int) -> Layout | None:
    """The layout a model starts in, or None where the setting or the provider fixes it
    (``batching.instances`` sessions of ``runtime.intra_op_threads``: accelerators, ``fixed``,
    one core)."""
    if setting == FIXED or provider != "cpu" or cores < 2:
        return None
    return cpu_layouts(cores)[NARROW if setting == NARROW else WIDE]
