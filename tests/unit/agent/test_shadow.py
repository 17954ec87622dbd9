"""Which live requests a shadow version also runs, and how the samples are counted."""

from __future__ import annotations

import asyncio
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from agent.batcher import Batcher, Instance
from agent.records import VersionRecord
from agent.shadow import Shadow, ShadowPolicy


@dataclass
class Record:
    """What a shadow reads of a version record: its names and its real queue."""

    model: str
    version: str
    digest: str
    batcher: Batcher[Any, Any]
    # (the samples here are plain coroutines: no model runs)
    runner: Any = field(default_factory=lambda: SimpleNamespace(
        provider="cpu", loaded=SimpleNamespace(intra_op_threads=1)))


def record(version: str, gate: threading.Event) -> VersionRecord:
    def run(items: list[int]) -> list[int]:
        gate.wait(10)
        return items

    batcher: Batcher[Any, Any] = Batcher(
        "m", [Instance(run, ThreadPoolExecutor(1))], max_batch=1, max_delay_s=0.0, max_queue=4)
    return cast(VersionRecord, Record("m", version, "ab" * 32, batcher))


def versions() -> tuple[threading.Event, VersionRecord, VersionRecord]:
    """An open gate both versions' runs wait on, the live version and the previous one."""
    gate = threading.Event()
    gate.set()
    return gate, record("2", gate), record("1", gate)


async def close(*records: VersionRecord) -> None:
    for r in records:
        await r.batcher.close(1)


async def test_a_sample_runs_only_when_none_is_in_flight_and_the_live_model_is_not_overloaded():
    _gate, live, previous = versions()
    shadow = Shadow(previous, ShadowPolicy(percent=100, max_per_s=1000))
    assert not shadow.take(previous)  # the shadow's own requests are not sampled
    assert shadow.take(live)
    release = asyncio.Event()

    async def slow() -> float:
        await release.wait()
        return 1.0

    shadow.run(slow)
    await asyncio.sleep(0.01)  # a token comes back (1000 a second)
    assert not shadow.take(live)  # one sample at a time: the next is dropped
    assert shadow.dropped == 1
    release.set()
    await asyncio.sleep(0.05)
    assert shadow.samples == 1
    live.batcher.admission.overloaded = True  # what a standing queue sets
    await asyncio.sleep(0.01)
    assert not shadow.take(live)
    assert shadow.dropped == 2
    live.batcher.admission.overloaded = False
    assert shadow.take(live)
    shadow.close()
    await close(live, previous)


async def test_samples_run_on_a_thread_of_their_own_at_the_lowest_priority():
    _, _, previous = versions()
    shadow = Shadow(previous, ShadowPolicy())

    def where() -> tuple[str, int]:
        tid = threading.get_native_id()
        return threading.current_thread().name, os.getpriority(os.PRIO_PROCESS, tid)

    name, nice = await shadow.call(where)
    assert name.startswith("shadow-m")
    assert nice == 19
    assert threading.current_thread().name != name
    shadow.close()
    await close(previous)


async def test_samples_are_rate_bounded_and_sampled_at_the_percentage():
    _, live, previous = versions()
    slow = Shadow(previous, ShadowPolicy(percent=100, max_per_s=0.001))
    assert slow.take(live)
    assert not any(slow.take(live) for _ in range(100))  # over the rate: not samples at all
    assert slow.dropped == 0
    never = Shadow(previous, ShadowPolicy(percent=0, max_per_s=1000))
    assert not any(never.take(live) for _ in range(100))
    some = Shadow(previous, ShadowPolicy(percent=30, max_per_s=1e9))

    async def done() -> float:
        return 1.0

    taken = 0
    for _ in range(2000):
        if some.take(live):
            taken += 1
            some.run(done)
            await asyncio.gather(*some._tasks)  # each sample done before the next request
    assert 450 < taken < 750, taken
    assert some.dropped == 0
    for s in (slow, never, some):
        s.close()
    await close(live, previous)


async def test_agreement_is_the_mean_of_the_last_samples_and_failures_are_dropped():
    _, _, previous = versions()
    shadow = Shadow(previous, ShadowPolicy(), window=4)
    assert shadow.agreement is None

    async def value(v: float) -> float:
        return v

    async def refused() -> float:
        raise RuntimeError("queue full")

    for v in (0.0, 1.0, 1.0, 1.0, 0.5):
        shadow.run(lambda v=v: value(v))
    shadow.run(refused)
    await asyncio.sleep(0.05)
    assert shadow.samples == 5
    assert shadow.dropped == 1
    assert shadow.window_samples == 4
    assert shadow.agreement == 0.875  # the first sample left the window of 4
    assert shadow.describe()["agreement"] == 0.875
    await close(previous)
