from __future__ import annotations

import asyncio
import time

from agent.health import LoopMonitor, check_liveness
from agent.settings import HealthSettings


async def test_a_blocked_loop_is_not_live():
    monitor = LoopMonitor(0.02)
    monitor.start()
    await asyncio.sleep(0.1)
    settings = HealthSettings(max_loop_lag_s=0.2, max_inference_s=5)
    assert check_liveness(settings, monitor, lambda: 0.0, lambda _: {}).live
    time.sleep(0.4)  # noqa: ASYNC251  (blocking the event loop is the point)
    state = check_liveness(settings, monitor, lambda: 0.0, lambda _: {})
    assert not state.live
    assert "event loop lag" in state.reasons[0]
    await asyncio.sleep(0.1)  # the loop turns again
    assert check_liveness(settings, monitor, lambda: 0.0, lambda _: {}).live
    await monitor.stop()


async def test_a_stuck_inference_is_not_live():
    monitor = LoopMonitor(0.02)
    monitor.start()
    settings = HealthSettings(max_loop_lag_s=1, max_inference_s=5)
    state = check_liveness(settings, monitor, lambda: 6.0, lambda _: {})
    assert not state.live
    assert "inference running" in state.reasons[0]
    await monitor.stop()


async def test_a_model_that_stopped_answering_is_not_live():
    monitor = LoopMonitor(0.02)
    monitor.start()
    settings = HealthSettings(max_silence_s=30)
    seen: list[float] = []

    def silent(max_silence_s: float) -> dict[str, float]:
        seen.append(max_silence_s)
        return {"defects": 42.0}

    state = check_liveness(settings, monitor, lambda: 0.0, silent)
    assert not state.live
    assert state.reasons == ("model defects: no inference came back for 42.0s",)
    assert seen == [30]
    await monitor.stop()
