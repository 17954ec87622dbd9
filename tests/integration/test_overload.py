"""Three times the sustainable rate for 60 s (EDGE_OVERLOAD_S) against a real daemon process.

The queue stays bounded, refusals are quick 503s, memory stays flat, latency is back to normal
within seconds after, and a request whose deadline passed while queued is never run. The
figures are printed; the assertions compare the daemon with itself (capacity measured first on
this machine), not with fixed times."""

from __future__ import annotations

import asyncio
import json
import os
import time

import aiohttp
import pytest
from lifecycle_helpers import samples
from support import Daemon, shed_for_load

from benchmarks.load import Load, capacity, open_loop, percentile, proc_stats
from inference.bundled import BUNDLE_ROOT

OVERLOAD_S = float(os.environ.get("EDGE_OVERLOAD_S", "60"))
MAX_QUEUE = 8
FRAME = (BUNDLE_ROOT / "defects" / "golden" / "000.jpg").read_bytes()
JPEG = {"Content-Type": "image/jpeg"}

pytestmark = pytest.mark.slow


async def inference_runs(http: aiohttp.ClientSession, url: str) -> float:
    """Requests that reached the model (the inference stage histogram's count)."""
    async with http.get(url + "/metrics") as resp:
        got = samples(await resp.text())
    key = ("edge_stage_duration_seconds_count", (("model", "defects"), ("stage", "inference")))
    return got[key]


async def test_three_times_the_sustainable_rate(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "models": [{"name": "defects", "bundled": "defects"}],
        "batching": {"max_queue": MAX_QUEUE},
        "runtime": {"intra_op_threads": 1},
        # No self-test inference in the counts: the model is never idle here anyway.
        "health": {"selftest_interval_s": 3600, "max_silence_s": 7200},
        "validate_golden": False,
    }))
    d = Daemon(["--config", str(config), "--state-dir", str(tmp_path / "state")])
    try:
        await d.wait_ready()
        url = d.url + "/v1/models/defects/detect"
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            cap = await capacity(http, url, FRAME, JPEG)
            base = Load()
            await open_loop(http, url, FRAME, JPEG, cap * 0.5, 4, base)
            base_p50 = percentile([a.latency_s for a in base.answers[5:]], 50)
            runs_before = await inference_runs(http, d.url)

            over = Load()
            rss: list[tuple[float, int]] = []
            depth_max: list[float] = []

            async def watch() -> None:
                while True:
                    rss.append((time.monotonic() - started, proc_stats(d.proc.pid)["rss"]))
                    async with http.get(d.url + "/metrics/summary") as resp:
                        got = samples(await resp.text())
                    depth_max.append(got[("edge_queue_depth_max", (("model", "defects"),))])
                    await asyncio.sleep(1)

            rss_before = proc_stats(d.proc.pid)["rss"]
            started = time.monotonic()
            watcher = asyncio.create_task(watch())
            # Half the requests carry a deadline shorter than a full queue's wait.
            short = {**JPEG, "X-Deadline-Ms": str(round(1000 * 2.5 / cap))}
            await asyncio.gather(
                open_loop(http, url, FRAME, JPEG, cap * 1.5, OVERLOAD_S, over),
                open_loop(http, url, FRAME, short, cap * 1.5, OVERLOAD_S, over),
            )
            ended = time.monotonic()
            watcher.cancel()
            runs_after = await inference_runs(http, d.url)

            after = Load()
            await open_loop(http, url, FRAME, JPEG, cap * 0.5, 6, after)
    finally:
        d.stop()

    statuses = [a.status for a in over.answers]
    ok = [a for a in over.answers if a.status == 200]
    shed = [a for a in over.answers if a.status == 503]
    expired = [a for a in over.answers if a.status == 504]
    served_rate = len(ok) / (ended - started)
    recovered = [a.latency_s for a in after.answers if a.sent_at >= after.answers[0].sent_at + 2]
    # The first seconds fill the queue and the connections: the working set of a full queue.
    # From then on memory must stay flat: no growth with the number of refused requests.
    settled = next(r for t, r in rss if t >= 5)
    peak = max(r for t, r in rss if t >= 5)
    print(
        f"\ncapacity {cap:.1f}/s; offered {3 * cap:.1f}/s for {OVERLOAD_S:g} s: "
        f"{len(ok)} ok ({served_rate:.1f}/s), {len(shed)} shed, {len(expired)} expired; "
        f"p50 ok {1e3 * percentile([a.latency_s for a in ok], 50):.0f} ms, "
        f"p99 shed {1e3 * percentile([a.latency_s for a in shed], 99):.1f} ms; "
        f"baseline p50 {1e3 * base_p50:.0f} ms, after +2 s p50 "
        f"{1e3 * percentile(recovered, 50):.0f} ms; queue max {max(depth_max):g}; "
        f"RSS {rss_before / 2**20:.0f} before, {settled / 2**20:.0f} at 5 s, "
        f"peak {peak / 2**20:.0f} MiB"
    )
    assert set(statuses) <= {200, 503, 504}, {s for s in statuses if s not in (200, 503, 504)}
    assert all(shed_for_load(a.reason) for a in shed)
    assert any("is overloaded" in a.reason for a in shed)  # the standing queue was recognised
    # Offered 3x: about two thirds shed on a steady machine. Loose bounds, because on a shared
    # one the capacity measured first is only an estimate of what the daemon gets later.
    assert len(shed) > 0.2 * len(statuses)  # it really was overloaded
    assert served_rate > 0.5 * cap  # and kept serving near capacity meanwhile
    assert max(depth_max) <= MAX_QUEUE
    # Refusals come at once: slower than none of the answers that had a queue to wait in.
    assert percentile([a.latency_s for a in shed], 99) < percentile([a.latency_s for a in ok], 50)
    assert peak <= settled * 1.10
    # Every request that reached the model was answered 200: no expired request ran.
    assert runs_after - runs_before == len(ok)
    assert all(a.status == 200 for a in after.answers)
    assert percentile(recovered, 50) < 3 * base_p50  # back to normal, not still queueing

