"""The size of ``/metrics/summary``, the body a fleet collector polls from every node."""

from __future__ import annotations

import aiohttp

from benchmarks.report import Target
from tests.support import Daemon


async def summary_bytes(daemon: Daemon) -> int:
    async with aiohttp.ClientSession() as http, http.get(daemon.url + "/metrics/summary") as r:
        return len(await r.read())


def target(size: int) -> Target:
    return Target("/metrics/summary body, two models (KB)", size / 1000, "<= 4", size <= 4000)
