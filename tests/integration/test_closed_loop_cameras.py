"""Cameras in a closed loop, as many as ``max_queue``, against a real daemon process on a busy
machine: each posts its next frame when the answer to the last arrives. The queue stands (every
frame waits for the others' runs), but never fills: none of them may ever get a 503, also
with another process busy on every core. (Open-loop overload is still shed: test_overload.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import aiohttp
import pytest
from lifecycle_helpers import samples
from support import Daemon

from inference.bundled import BUNDLE_ROOT

MAX_QUEUE = 6
FRAMES_EACH = 12
FRAME = (BUNDLE_ROOT / "defects" / "golden" / "000.jpg").read_bytes()


def cpu_hogs() -> list[subprocess.Popen[bytes]]:
    """A busy loop on every core this process may use (they end with the test)."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(len(os.sched_getaffinity(0)))
    ]


@pytest.mark.parametrize("layout", ["fixed", "adaptive"])
async def test_max_queue_closed_loop_cameras_get_no_503_on_a_busy_machine(tmp_path, layout):
    """``fixed``: one single-threaded session. ``adaptive`` (the default): the model starts
    wide and turns narrow under the cameras, with every frame answered across the switch."""
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "models": [{"name": "defects", "bundled": "defects"}],
        # The default standing-queue interval (250 ms) is far shorter than the wait of a
        # frame behind five others on a contended CPU: the queue stands the whole time.
        "batching": {"max_queue": MAX_QUEUE, "max_batch": 1},
        "runtime": {"intra_op_threads": 1 if layout == "fixed" else 2, "thread_layout": layout},
        "validate_golden": False,
    }))
    d = Daemon(["--config", str(config), "--state-dir", str(tmp_path / "state")])
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        await d.wait_ready()
        hogs = cpu_hogs()
        statuses: list[int] = []
        refusals: list[str] = []
        url = d.url + "/v1/models/defects/detect"

        # Adaptive: the narrow sessions are built in the background (at nice 5, against the
        # hogs), so the cameras go on past FRAMES_EACH until the switch is made.
        switched = asyncio.Event()
        if layout != "adaptive":
            switched.set()
        give_up = time.monotonic() + 240

        async def camera(http: aiohttp.ClientSession) -> None:
            sent = 0
            while sent < FRAMES_EACH or (not switched.is_set() and time.monotonic() < give_up):
                sent += 1
                async with http.post(url, data=FRAME,
                                     headers={"Content-Type": "image/jpeg"}) as resp:
                    statuses.append(resp.status)
                    body = await resp.read()
                    if resp.status != 200:
                        refusals.append(body.decode(errors="replace"))

        async def watch(http: aiohttp.ClientSession) -> None:
            while not switched.is_set():
                async with http.get(d.url + "/v1/models") as resp:
                    (model,) = (await resp.json())["models"]
                if model["threads"]["layout"] == "narrow":
                    switched.set()
                await asyncio.sleep(0.2)

        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            watcher = asyncio.create_task(watch(http))
            await asyncio.gather(*(camera(http) for _ in range(MAX_QUEUE)))
            watcher.cancel()
            async with http.get(d.url + "/metrics") as resp:
                metrics = await resp.text()
            async with http.get(d.url + "/v1/models") as resp:
                (described,) = (await resp.json())["models"]
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        d.stop()
    assert len(statuses) >= MAX_QUEUE * FRAMES_EACH
    assert refusals == [], refusals[:3]
    # It was a standing queue all along, and still not called overload.
    events = {dict(labels)["event"]: value for (name, labels), value in samples(metrics).items()
              if name == "edge_batcher_events_total"}
    assert events["overload"] == 0, events
    if layout == "adaptive":
        assert events["relayout"] == 1, events
        assert described["threads"] == {"layout": "narrow", "instances": 2,
                                        "intra_op_threads": 1}
    else:
        assert events["relayout"] == 0, events
        assert described["threads"] == {"layout": "fixed", "instances": 1,
                                        "intra_op_threads": 1}
