"""Shadow runs: a sample of live requests also runs on a second loaded version of a model.

While a second version is loaded beside the active one (a candidate before its swap,
:mod:`agent.models.trial`; the previous version during ``bake_s`` after a swap,
:mod:`agent.models.bake`), a sample of the live requests (``percent``, at most ``max_per_s``)
is run on it too, after the live answer is computed and without delaying it: the live request
starts the shadow run as a separate task and answers.

Samples run at the lowest priority the kernel has: on one thread of their own at nice 19, on
a single-threaded CPU session of the shadow version built for the purpose (ONNX Runtime's pool
threads would otherwise run the shadow's work at the live priority), so a sample only takes
CPU time the live work leaves idle. One sample runs at a time; a sample that would wait for
the one in flight, or that comes while the live model is overloaded, is dropped (and counted).
The two answers are compared (:mod:`inference.agreement`) and the agreement over the last
samples is what the metrics and ``/v1/models`` report. With no second version loaded nothing
here runs at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.loading import session_config
from agent.records import VersionRecord
from agent.settings import Settings
from inference.cpu import lower_thread_priority
from inference.kinds import Servable, model_kinds

log = logging.getLogger(__name__)

WINDOW = 200  # agreement is the mean over the last this many samples
SHADOW_NICE = 19  # the most a thread can be lowered: samples take only idle CPU time

T = TypeVar("T")


@dataclass(frozen=True)
class ShadowPolicy:
    percent: float = 10.0  # of live requests, sampled at random
    max_per_s: float = 2.0  # and at most this many a second (a token bucket, burst 1)
    before_swap_s: float = 0.0  # a candidate is shadowed this long before its swap (0: not)


def shadow_executor(model: str) -> ThreadPoolExecutor:
    """The one thread a shadow's samples run on, at the lowest priority."""
    return ThreadPoolExecutor(1, thread_name_prefix=f"shadow-{model}",
                              initializer=lower_thread_priority, initargs=(SHADOW_NICE,))


class Shadow:
    """The second version of one model and how far it agrees with the live answers.

    ``runner`` is what the samples run on (default: the version's own runner, as on an
    accelerator, where a CPU priority means nothing to the device)."""

    def __init__(self, record: VersionRecord, policy: ShadowPolicy,
                 runner: Servable | None = None, executor: ThreadPoolExecutor | None = None,
                 window: int = WINDOW, stage: str = "bake") -> None:
        self.record = record  # the shadow version
        self.policy = policy
        self.runner = runner if runner is not None else record.runner
        self.stage = stage  # "bake" (the previous version) or "before swap" (a candidate)
        self.samples = 0  # compared
        self.dropped = 0  # sampled, but not run: one in flight, the live model overloaded
        self._executor = executor if executor is not None else shadow_executor(record.model)
        self._window: deque[float] = deque(maxlen=window)
        self._tokens = 1.0
        self._refilled = time.monotonic()
        self._in_flight = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def agreement(self) -> float | None:
        return sum(self._window) / len(self._window) if self._window else None

    @property
    def window_samples(self) -> int:
        return len(self._window)

    def take(self, live: VersionRecord) -> bool:
        """Whether this live request is sampled and may run on the shadow now; if so the
        caller passes its comparison to :meth:`run` at once."""
        if live.batcher is self.record.batcher or random.random() * 100 >= self.policy.percent:
            return False
        now = time.monotonic()
        self._tokens = min(1.0, self._tokens + (now - self._refilled) * self.policy.max_per_s)
        self._refilled = now
        if self._tokens < 1.0:
            return False  # over the rate: not a sample at all
        if self._in_flight or live.batcher.overloaded:
            self.dropped += 1
            return False
        self._tokens -= 1.0
        self._in_flight = True
        return True

    async def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (a sample's whole work: decode, run, decode the output) on the shadow's
        thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def run(self, compare: Callable[[], Awaitable[float]]) -> None:
        """Run ``compare`` (the shadow's answer against the live one) in the background."""
        task = asyncio.get_running_loop().create_task(self._sample(compare))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _sample(self, compare: Callable[[], Awaitable[float]]) -> None:
        try:
            value = await compare()
        except Exception as exc:  # e.g. the shadow closed meanwhile: a dropped sample
            self.dropped += 1
            log.debug("shadow sample dropped", extra={"model": self.record.model,
                                                      "error": str(exc)})
            return
        finally:
            self._in_flight = False
        self._window.append(value)
        self.samples += 1

    def close(self) -> None:
        """No more samples; the one in flight finishes on its thread, which then ends."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def describe(self) -> dict[str, Any]:
        agreement = self.agreement
        return {
            "version": self.record.version,
            "digest": f"sha256:{self.record.digest}",
            "stage": self.stage,
            "percent": self.policy.percent,
            "max_per_s": self.policy.max_per_s,
            "samples": self.samples,
            "dropped": self.dropped,
            "agreement": None if agreement is None else round(agreement, 4),
            "provider": self.runner.provider,
            "intra_op_threads": self.runner.loaded.intra_op_threads,
        }


async def open_shadow(settings: Settings, record: VersionRecord, policy: ShadowPolicy,
                      stage: str) -> Shadow:
    """A shadow of ``record``: on the CPU, a single-threaded session of the same file built
    (and warmed up) on the shadow's own low-priority thread; on an accelerator, the version's
    own session, called from that thread."""
    executor = shadow_executor(record.model)
    runner = record.runner
    try:
        if record.provider == "cpu":
            runner = await asyncio.get_running_loop().run_in_executor(
                executor, _single_thread_runner, settings, record)
    except BaseException:
        executor.shutdown(wait=False, cancel_futures=True)
        raise
    return Shadow(record, policy, runner=runner, executor=executor, stage=stage)


def _single_thread_runner(settings: Settings, record: VersionRecord) -> Servable:
    loaded = record.runner.loaded
    if loaded.path is None:
        return record.runner
    config = dataclasses.replace(session_config(settings), providers=("cpu",),
                                 intra_op_threads=1, allow_spinning=False)
    names = dict(enumerate(record.labels)) or None
    runner = model_kinds()[record.kind.name](loaded.path, config, names, loaded.digest)
    runner.warmup(1)
    return runner
