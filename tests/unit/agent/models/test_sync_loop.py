"""The sync loop outlives a failing pass: months unattended must not hinge on one bug."""

from __future__ import annotations

import asyncio

from agent.models.sync import Syncer


async def test_a_pass_that_raises_is_logged_and_the_loop_goes_on(caplog):
    passes: list[int] = []

    async def flaky_sync() -> dict:
        passes.append(len(passes))
        if len(passes) == 1:
            raise RuntimeError("a bug in one pass")
        return {"fusion": "running 1.0.0"}

    syncer = object.__new__(Syncer)  # only run() is under test: no service, cache or fetcher
    syncer._manifest_ref = "http://cloud.invalid/fleet.yaml"
    syncer.sync = flaky_sync  # type: ignore[method-assign]
    loop = asyncio.create_task(syncer.run(interval_s=0.01, watch_s=0))
    for _ in range(200):
        if len(passes) >= 3:
            break
        await asyncio.sleep(0.01)
    loop.cancel()
    assert len(passes) >= 3
    assert "model sync failed" in caplog.text
