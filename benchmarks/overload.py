"""Overload: a multiple of the sustainable rate, open loop, against one daemon; how fast it sheds
and what the requests it accepts pay for the queue."""

from __future__ import annotations

from typing import Any

import aiohttp

from benchmarks.common import JPEG, ms
from benchmarks.load import Load, open_loop, proc_stats
from benchmarks.report import Target
from tests.support import Daemon


async def overload(
    daemon: Daemon, data: bytes, rate: float, seconds: float, connections: int = 64
) -> dict[str, float]:
    url = daemon.url + "/v1/models/m/detect"
    before = proc_stats(daemon.proc.pid)["rss"]
    load = Load()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as http:
        await open_loop(http, url, data, JPEG, rate, seconds, load)
    ok = [a.latency_s for a in load.answers if a.status == 200]
    shed = [a.latency_s for a in load.answers if a.status == 503]
    start = min(a.sent_at for a in load.answers)
    # Steady state: without the first second, while the queue fills and the overload is seen.
    steady = [a.latency_s for a in load.answers if a.status == 200 and a.sent_at >= start + 1]
    return {
        "accepted_p99": ms(ok, 99), "steady_p99": ms(steady, 99),
        "shed_p99": ms(shed, 99), "shed": len(shed),
        "ok": len(ok), "other": sum(1 for a in load.answers if a.status not in (200, 503)),
        "rss_before": before, "rss_after": proc_stats(daemon.proc.pid)["rss"],
    }


def targets(over: dict[str, Any], unloaded_p99: float) -> list[Target]:
    """At 3x: the accepted p99 (all of it, and in steady state) against the unloaded p99, and
    the time to shed."""
    ratio = over["accepted_p99"] / unloaded_p99
    steady = over["steady_p99"] / unloaded_p99
    return [
        Target("3x overload: accepted p99 / unloaded p99", ratio, "<= 2.0", ratio <= 2.0,
               f"{over['ok']} ok, {over['shed']} shed, {over['other']} other; RSS "
               f"{over['rss_before'] / 2**20:.0f} -> {over['rss_after'] / 2**20:.0f} MiB"),
        Target("same, steady state (after the first second)", steady, "<= 2.0", steady <= 2.0),
        Target("3x overload: time to shed, p99 (ms)", over["shed_p99"], "< 5",
               over["shed_p99"] < 5),
    ]
