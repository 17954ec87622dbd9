"""``load_version``: batch padding is chosen by provider (real CPU sessions; no GPU here, so the
GPU side of ``auto`` is the provider check alone)."""

from __future__ import annotations

import os
import threading

import pytest
from support import TINY_MODEL

from agent.loading import load_version
from agent.settings import load_settings
from inference.session import file_digest


@pytest.mark.parametrize(("mode", "padded"), [("auto", None), ("on", 4), ("off", None)])
async def test_batches_are_padded_only_where_asked(mode: str, padded: int | None) -> None:
    settings = load_settings(
        environ={},
        overrides={
            "models": [f"m={TINY_MODEL}"],
            "runtime.providers": ["cpu"],
            "batching.max_batch": 4,
            "batching.pad_batches": mode,
        },
    )
    cfg = settings.models[0]
    loaded = await load_version(settings, cfg, TINY_MODEL, file_digest(TINY_MODEL))
    try:
        assert loaded.runners[0]._pad_to == padded  # auto: CPU padding would be wasted work
    finally:
        await loaded.batcher.close(1)


async def test_inference_threads_run_below_the_event_loop() -> None:
    settings = load_settings(
        environ={},
        overrides={"models": [f"m={TINY_MODEL}"], "runtime.providers": ["cpu"],
                   "runtime.worker_nice": 4},
    )
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    loaded = await load_version(settings, settings.models[0], TINY_MODEL, file_digest(TINY_MODEL))
    try:
        executor = loaded.batcher._instances[0].executor
        tid = executor.submit(threading.get_native_id).result()
        assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, base + 4)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    finally:
        await loaded.batcher.close(1)
