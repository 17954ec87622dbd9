"""The thread layout of a CPU model: when it switches (the policy alone, on a fake clock), that a
batcher takes new instances with no request lost, and the switch on real ONNX Runtime sessions."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from support import TINY_MODEL

from agent.batcher import Batcher, Instance
from agent.loading import VersionSpec, load_version
from agent.settings_loader import load_settings
from agent.thread_layout import NARROW, WIDE, LayoutPolicy, choose_layout
from inference.session import file_digest

# -- the policy ---------------------------------------------------------------------------------


def test_mostly_contended_batches_turn_a_wide_model_narrow():
    policy = LayoutPolicy(WIDE)
    seen = [policy.observe(t, contended) for t, contended in
            enumerate([True, False, True, True, False, True, True])]
    assert seen == [None] * 7  # 5 of the last 7: not yet
    assert policy.observe(8, True) == NARROW  # 6 of the last 8


def test_a_lone_camera_never_turns_a_wide_model_narrow():
    policy = LayoutPolicy(WIDE)
    assert all(policy.observe(t * 0.1, False) is None for t in range(1000))


def test_a_narrow_model_turns_wide_after_a_quiet_while_not_before():
    policy = LayoutPolicy(NARROW, wide_after_s=10.0)
    assert all(policy.observe(t * 0.5, False) is None for t in range(20))  # 9.5 s quiet
    assert policy.observe(10.0, False) == WIDE
    # One contended batch starts the quiet time again.
    policy = LayoutPolicy(NARROW, wide_after_s=10.0)
    for t in range(15):
        policy.observe(t * 0.5, False)
    policy.observe(7.5, True)
    assert all(policy.observe(8 + t * 0.5, False) is None for t in range(20))
    # So few batches that the quiet proves nothing: still narrow.
    policy = LayoutPolicy(NARROW, wide_after_s=10.0)
    assert [policy.observe(t * 5.0, False) for t in range(10)] == [None] * 10


def test_a_switch_forgets_what_the_other_layout_saw():
    policy = LayoutPolicy(WIDE)
    for t in range(5):
        policy.observe(t, True)
    policy.switched(NARROW)
    policy.switched(WIDE)
    assert policy.observe(6, True) is None  # history cleared: one of one, not six of eight


def test_accelerators_fixed_layouts_and_one_core_keep_the_configured_instances():
    assert choose_layout("adaptive", "cuda", 8) is None
    assert choose_layout("fixed", "cpu", 8) is None
    assert choose_layout("adaptive", "cpu", 1) is None
    wide = choose_layout("adaptive", "cpu", 4)
    assert wide is not None
    assert (wide.name, wide.instances, wide.intra_op_threads) == (WIDE, 1, 4)
    narrow = choose_layout("narrow", "cpu", 4)
    assert narrow is not None
    assert (narrow.name, narrow.instances, narrow.intra_op_threads) == (NARROW, 4, 1)


# -- the batcher takes new instances ---------------------------------------------------------


class Gated:
    """A model run that blocks until released, and says which thread ran it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.threads: list[str] = []

    def run(self, items: list[int]) -> list[int]:
        self.started.set()
        self.gate.wait(10)
        self.threads.append(threading.current_thread().name)
        return [i * 10 for i in items]


async def test_a_relayout_lets_the_running_batch_finish_and_serves_the_rest_on_the_new_ones():
    model = Gated()
    old = ThreadPoolExecutor(1, thread_name_prefix="old")
    b: Batcher[int, int] = Batcher("m", [Instance(model.run, old)], max_batch=1,
                                   max_delay_s=0.0, max_queue=16)

    async def submit(value: int) -> int:
        slot = b.reserve()
        return (await b.submit(slot, value))[0]

    first = asyncio.create_task(submit(1))
    assert await asyncio.to_thread(model.started.wait, 10)
    new = [Instance(model.run, ThreadPoolExecutor(1, thread_name_prefix=f"new{i}"))
           for i in range(2)]
    b.relayout(new)
    rest = [asyncio.create_task(submit(v)) for v in range(2, 8)]
    model.gate.set()
    assert await first == 10
    assert [await t for t in rest] == [v * 10 for v in range(2, 8)]
    # The batch that was running when it changed, and only that one, ran on the old thread.
    assert sorted(name[:3] for name in model.threads) == ["new"] * 6 + ["old"]
    assert old._shutdown  # the replaced instance's thread ended after its run
    assert b.instances == 2
    assert b.relayouts == 1
    assert await b.close(1)


async def test_an_idle_replaced_instance_ends_and_close_ends_every_thread():
    model = Gated()
    model.gate.set()
    old = ThreadPoolExecutor(1)
    b: Batcher[int, int] = Batcher("m", [Instance(model.run, old)], max_batch=1,
                                   max_delay_s=0.0, max_queue=16)
    await asyncio.sleep(0)  # the dispatcher holds the idle instance, waiting for work
    new = [Instance(model.run, ThreadPoolExecutor(1))]
    b.relayout(new)
    slot = b.reserve()
    assert (await b.submit(slot, 3))[0] == 30
    assert await b.close(1)
    assert old._shutdown
    assert new[0].executor._shutdown


# -- on real sessions ---------------------------------------------------------------------------


def _settings(layout: str):
    return load_settings(environ={}, overrides={
        "models": [f"m={TINY_MODEL}"], "runtime.providers": ["cpu"],
        "runtime.intra_op_threads": 2, "runtime.thread_layout": layout,
    })


async def _run_concurrently(batcher: Batcher, item: object, n: int) -> list:
    async def one() -> object:
        slot = batcher.reserve()
        return (await batcher.submit(slot, item))[0]

    return await asyncio.gather(*(one() for _ in range(n)))


async def test_an_adaptive_model_starts_wide_and_turns_narrow_under_concurrent_load():
    settings = _settings("adaptive")
    loaded = await load_version(settings, settings.models[0],
                                VersionSpec(TINY_MODEL, "file", file_digest(TINY_MODEL)))
    batcher, runner = loaded.batcher, loaded.runner
    try:
        assert batcher.threads == {"layout": "wide", "instances": 1, "intra_op_threads": 2}
        assert runner.loaded.intra_op_threads == 2
        sample = runner.sample_input()
        wide_session = weakref.ref(runner.loaded.session)
        (before,) = await _run_concurrently(batcher, sample, 1)
        for _ in range(200):  # each round: 6 at once, so nearly every batch waited
            outputs = await _run_concurrently(batcher, sample, 6)
            if batcher.relayouts:
                break
        assert batcher.relayouts == 1
        assert batcher.threads == {"layout": "narrow", "instances": 2, "intra_op_threads": 1}
        assert batcher.instances == 2
        assert runner.loaded.intra_op_threads == 1  # one session, now single-threaded
        gc.collect()
        assert wide_session() is None  # the replaced session is gone, and its memory with it
        after = await _run_concurrently(batcher, sample, 4)
        for out in [*outputs, *after]:
            np.testing.assert_allclose(out, before, rtol=1e-5, atol=1e-4)
    finally:
        await batcher.close(5)


@pytest.mark.parametrize(("layout", "threads"), [
    ("narrow", {"layout": "narrow", "instances": 2, "intra_op_threads": 1}),
    ("wide", {"layout": "wide", "instances": 1, "intra_op_threads": 2}),
    ("fixed", {"layout": "fixed", "instances": 1, "intra_op_threads": 2}),
])
async def test_a_pinned_layout_is_served_as_set_and_never_switches(layout, threads):
    settings = _settings(layout)
    loaded = await load_version(settings, settings.models[0],
                                VersionSpec(TINY_MODEL, "file", file_digest(TINY_MODEL)))
    try:
        assert loaded.batcher.threads == threads
        sample = loaded.runner.sample_input()
        for _ in range(10):
            await _run_concurrently(loaded.batcher, sample, 6)
        assert loaded.batcher.relayouts == 0
        assert loaded.batcher.threads == threads
    finally:
        await loaded.batcher.close(5)


async def test_a_switch_that_cannot_build_its_session_keeps_serving_and_is_not_retried_at_once(
    tmp_path, caplog
):
    model = tmp_path / "model.onnx"
    model.write_bytes(TINY_MODEL.read_bytes())
    settings = load_settings(environ={}, overrides={
        "models": [f"m={model}"], "runtime.providers": ["cpu"], "runtime.intra_op_threads": 2,
    })
    loaded = await load_version(settings, settings.models[0],
                                VersionSpec(model, "file", file_digest(model)))
    model.unlink()  # the file it would be built again from is gone
    try:
        sample = loaded.runner.sample_input()
        with caplog.at_level(logging.ERROR, logger="agent.thread_layout"):
            for _ in range(20):  # each round: 6 at once, so nearly every batch waited
                outputs = await _run_concurrently(loaded.batcher, sample, 6)
                assert len(outputs) == 6
        failures = [r for r in caplog.records if r.getMessage() == "thread layout switch failed"]
        assert len(failures) == 1, failures
        assert loaded.batcher.relayouts == 0
        assert loaded.batcher.threads["layout"] == "wide"
    finally:
        await loaded.batcher.close(5)
