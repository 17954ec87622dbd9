from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from agent.batcher import Batcher, Instance
from agent.errors import DeadlineExceededError, DrainingError, InferenceFailedError, QueueFullError


class Model:
    """A stand-in model run: records each batch, optionally blocks until released."""

    def __init__(self, delay: float = 0.0, fail: bool = False, poison: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.delay = delay
        self.fail = fail
        self.poison = poison  # a batch holding this value raises
        self.gate = threading.Event()
        self.gate.set()

    def run(self, items: list[int]) -> list[int]:
        self.gate.wait(10)
        time.sleep(self.delay)
        self.batches.append(list(items))
        if self.fail or self.poison in items:
            raise RuntimeError("CUDA error: an illegal memory access")
        return [i * 10 for i in items]


def make(model: Model, instances: int = 1, **kw) -> Batcher[int, int]:
    opts = {"max_batch": 4, "max_delay_s": 0.0, "max_queue": 16} | kw
    return Batcher(
        "m", [Instance(model.run, ThreadPoolExecutor(1)) for _ in range(instances)], **opts
    )


async def submit(b: Batcher[int, int], value: int, deadline: float | None = None):
    slot = b.reserve()
    try:
        return await b.submit(slot, value, deadline)
    finally:
        slot.release()


async def test_results_go_back_to_their_requests():
    b = make(Model())
    results = await asyncio.gather(*(submit(b, i) for i in range(10)))
    assert [r[0] for r in results] == [i * 10 for i in range(10)]
    await b.close(1)


async def test_queued_items_are_batched_up_to_max_batch():
    model = Model()
    model.gate.clear()  # hold the first batch so the others queue behind it
    b = make(model, max_batch=3)
    tasks = [asyncio.create_task(submit(b, i)) for i in range(7)]
    await asyncio.sleep(0.05)
    model.gate.set()
    await asyncio.gather(*tasks)
    assert [len(x) for x in model.batches] == [3, 3, 1]
    assert sorted(i for batch in model.batches for i in batch) == list(range(7))
    await b.close(1)


async def test_max_delay_waits_for_company():
    model = Model()
    b = make(model, max_batch=4, max_delay_s=0.2)
    first = asyncio.create_task(submit(b, 1))
    await asyncio.sleep(0.02)
    second = asyncio.create_task(submit(b, 2))
    await asyncio.gather(first, second)
    assert model.batches == [[1, 2]]
    await b.close(1)


async def test_full_queue_refuses_at_once_and_depth_is_bounded():
    model = Model()
    model.gate.clear()
    b = make(model, max_batch=1, max_queue=2)
    running = asyncio.create_task(submit(b, 0))
    await asyncio.sleep(0.02)  # item 0 is running: it no longer holds a slot
    queued = [asyncio.create_task(submit(b, i)) for i in (1, 2)]
    await asyncio.sleep(0.01)
    assert b.depth == 2
    with pytest.raises(QueueFullError):
        b.reserve()
    model.gate.set()
    await asyncio.gather(running, *queued)
    assert b.depth == 0
    await b.close(1)


async def test_expired_deadline_is_refused_without_running():
    model = Model()
    model.gate.clear()
    b = make(model, max_batch=1)
    blocker = asyncio.create_task(submit(b, 0))
    await asyncio.sleep(0.02)
    late = asyncio.create_task(submit(b, 1, deadline=time.monotonic() + 0.05))
    await asyncio.sleep(0.1)  # its deadline passes while it waits in the queue
    model.gate.set()
    with pytest.raises(DeadlineExceededError):
        await late
    await blocker
    assert model.batches == [[0]]  # 1 never ran
    with pytest.raises(DeadlineExceededError):
        await submit(b, 2, deadline=time.monotonic() - 1)
    assert model.batches == [[0]]
    assert b.expired == 2
    await b.close(1)


async def test_a_failing_batch_fails_only_its_requests():
    model = Model(fail=True)
    b = make(model)
    with pytest.raises(InferenceFailedError):
        await submit(b, 1)
    model.fail = False
    assert (await submit(b, 2))[0] == 20
    assert b.failed_batches == 1
    await b.close(1)


async def test_a_poisoned_input_fails_alone_and_its_batch_neighbours_are_answered():
    model = Model(poison=2)
    model.gate.clear()
    b = make(model, max_batch=3)
    tasks = [asyncio.create_task(submit(b, i)) for i in range(4)]
    await asyncio.sleep(0.05)
    model.gate.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [r[0] if isinstance(r, tuple) else type(r) for r in results] == [
        0, 10, InferenceFailedError, 30
    ]
    # [0, 1, 2] failed and each ran alone: only [2] failed again.
    assert model.batches == [[0, 1, 2], [0], [1], [2], [3]]
    assert b.failed_batches == 2
    await b.close(1)


async def test_instances_run_in_parallel():
    both_running = threading.Barrier(2, timeout=30)

    def run(items: list[int]) -> list[int]:
        both_running.wait()  # one instance at a time would break the barrier, not pass it
        return [i * 10 for i in items]

    b = Batcher("m", [Instance(run, ThreadPoolExecutor(1)) for _ in range(2)],
                max_batch=1, max_delay_s=0.0, max_queue=16)
    results = await asyncio.gather(submit(b, 1), submit(b, 2))
    assert sorted(r[0] for r in results) == [10, 20]
    await b.close(1)


async def test_longest_run_reports_a_stuck_inference():
    model = Model()
    model.gate.clear()
    b = make(model)
    task = asyncio.create_task(submit(b, 1))
    await asyncio.sleep(0.15)
    assert b.longest_run_s() >= 0.1
    model.gate.set()
    await task
    assert b.longest_run_s() == 0.0
    await b.close(1)


async def test_close_finishes_queued_work_then_refuses():
    model = Model(delay=0.05)
    b = make(model, max_batch=1)
    tasks = [asyncio.create_task(submit(b, i)) for i in range(4)]
    await asyncio.sleep(0.01)
    await b.close(5)
    assert [(await t)[0] for t in tasks] == [0, 10, 20, 30]
    with pytest.raises(DrainingError):
        b.reserve()


async def test_close_does_not_wait_forever_for_a_wedged_run():
    model = Model()
    model.gate.clear()  # a session.run that never returns (a wedged GPU context)
    b = make(model)
    task = asyncio.create_task(submit(b, 1))
    await asyncio.sleep(0.02)
    # close gives up on the run after its timeout: it returns while the run is still blocked.
    assert await asyncio.wait_for(b.close(0.1), 30) is False
    assert not model.gate.is_set()
    model.gate.set()  # let the thread end so the test process can exit
    assert (await asyncio.wait_for(task, 1))[0] == 10


async def _fill(b: Batcher[int, int], n: int) -> list[asyncio.Task]:
    tasks = []
    for i in range(n):
        slot = b.reserve()
        tasks.append(asyncio.create_task(_submit_reserved(b, slot, i)))
    return tasks


async def _submit_reserved(b: Batcher[int, int], slot, value: int):
    try:
        return await b.submit(slot, value)
    finally:
        slot.release()


async def test_a_standing_queue_that_fills_up_limits_admission_until_idle():
    b = make(Model(delay=0.02), max_batch=1, max_queue=8, standing_queue_s=0.05)
    await submit(b, 0)  # one run: the batcher now knows how long a run takes
    tasks = await _fill(b, 8)  # ~160 ms of work: every batch waits longer than one run
    refusals = 0
    for _ in range(100):  # frames keep arriving faster than they are served (open loop)
        if b.overloaded:
            break
        try:
            tasks.append(asyncio.create_task(_submit_reserved(b, b.reserve(), 7)))
        except QueueFullError:
            refusals += 1
        await asyncio.sleep(0.005)
    assert b.overloaded
    assert refusals > 0  # the queue filled up: demand it cannot hold
    assert b.overload_episodes == 1
    assert b.depth > 1  # already admitted work is kept and served...
    with pytest.raises(QueueFullError) as refused:
        b.reserve()  # ...but nothing more may wait behind it (a batch per instance at most)
    assert refused.value.detail == {"max_queue": 8, "overloaded": True, "limit": 1}
    await asyncio.gather(*tasks)
    await asyncio.sleep(0.05)
    await submit(b, 99)  # an instance found no work: the overload is over
    assert not b.overloaded
    more = await _fill(b, 8)  # the full max_queue absorbs bursts again
    await asyncio.gather(*more)
    await b.close(1)


async def test_a_burst_that_drains_within_the_interval_is_not_overload():
    b = make(Model(delay=0.02), max_batch=1, max_queue=16, standing_queue_s=1.0)
    await submit(b, 0)
    await asyncio.gather(*await _fill(b, 8))
    assert not b.overloaded
    assert b.overload_episodes == 0
    off = make(Model(delay=0.02), max_batch=1, max_queue=16, standing_queue_s=0.0)
    await submit(off, 0)
    await asyncio.gather(*await _fill(off, 10))  # 0: never limited below max_queue
    assert not off.overloaded
    assert off.overload_episodes == 0
    await b.close(1)
    await off.close(1)


async def test_while_overloaded_a_request_is_admitted_only_when_due_to_start(monkeypatch):
    # The moving averages set by hand: a frame runs 50 ms, pre-processing takes 10 ms, so the
    # admission window is 10 + 50 / 4 = 22.5 ms.
    b = make(Model(), max_batch=1, max_queue=16)
    b.admission.overloaded = True
    b.admission.item_s, b.admission.pre_s, b.admission.run_s = 0.05, 0.01, 0.05
    inst = b._instances[0]
    inst.running_items = 1
    now = time.monotonic()
    with monkeypatch.context() as clock:  # stopped: no await below, and exact figures
        clock.setattr(time, "monotonic", lambda: now)
        inst.running_since = now - 0.01  # 40 ms still to run: too early
        with pytest.raises(QueueFullError) as refused:
            b.reserve()
        assert refused.value.detail["overloaded"] is True
        assert refused.value.detail["expected_start_ms"] == pytest.approx(40)
        inst.running_since = now - 0.04  # 10 ms to run: in time, admitted
        slot = b.reserve()
        # One admitted and not yet running: the next would start a whole frame later.
        assert b.expected_start_s(now) > b.admission.window_s()
    inst.running_since = None
    slot.release()
    await b.close(1)


async def test_overload_ends_only_when_an_instance_idles_with_nobody_turned_away():
    b = make(Model(delay=0.02), max_batch=1, max_queue=16)
    await submit(b, 0)
    b.admission.overloaded = True
    b.admission.item_s = 10.0  # a refusal counts as recent for 10 s
    b.admission.refused(time.monotonic(), queue_full=False)
    await submit(b, 1)  # the instance finds no work after it...
    await asyncio.sleep(0.05)
    await submit(b, 2)
    assert b.overloaded  # ...but a request was just turned away: demand is still there
    b.admission.refused(time.monotonic() - 11, queue_full=False)
    await submit(b, 3)
    await asyncio.sleep(0.05)  # the instance comes back and looks for work
    assert not b.overloaded
    await b.close(1)


async def test_cameras_in_a_closed_loop_as_many_as_max_queue_are_never_refused():
    """Each client posts its next item when the last is answered: the queue stands (every
    batch waits several runs) but never fills, so it is not overload, however slow the runs."""
    b = make(Model(delay=0.01), max_batch=1, max_queue=6, standing_queue_s=0.02)
    refused: list[dict] = []

    async def camera(n: int) -> None:
        for i in range(15):
            try:
                await submit(b, n * 100 + i)
            except QueueFullError as exc:
                refused.append(exc.detail)

    await asyncio.gather(*(camera(n) for n in range(6)))
    assert refused == []
    assert not b.overloaded
    assert b.overload_episodes == 0
    await b.close(1)


async def test_a_request_admitted_before_a_drain_is_still_served_by_its_batcher():
    """A swap drains the old version's queue while a request admitted to it is still reading
    its body: that request runs there (its answer names the version it was admitted to), the
    drain waits for it, and nothing new is taken."""
    b = make(Model())
    ticket = b.admit()
    closing = asyncio.create_task(b.close(5))
    await asyncio.sleep(0.05)
    assert not closing.done()  # waiting for the admitted request
    with pytest.raises(DrainingError):
        b.reserve()
    slot = b.reserve(ticket)
    try:
        result, _ = await b.submit(slot, 4)
    finally:
        slot.release()
    assert result == 40
    assert await closing is True


async def test_a_released_ticket_lets_the_drain_finish():
    b = make(Model())
    ticket = b.admit()
    closing = asyncio.create_task(b.close(5))
    await asyncio.sleep(0.02)
    ticket.release()  # the request ended before it reached the queue (a bad body)
    ticket.release()  # once only
    assert await asyncio.wait_for(closing, 5) is True
    with pytest.raises(DrainingError):
        b.reserve(ticket)  # a used ticket admits nothing
