"""A model swap under load: a new fusion version is published and synced while the detector and
the fusion model both take open-loop traffic; no request may fail, and p99 must hold."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import JPEG, TOKEN, ms
from benchmarks.load import Load, open_loop
from benchmarks.report import Target
from inference.bundled import BUNDLE_ROOT
from tests.integration.lifecycle_helpers import fusion_model, publish
from tests.support import Daemon


def _publish_new_fusion(workdir: Path) -> tuple[bytes, str]:
    window = (BUNDLE_ROOT / "fusion" / "sample-request.json").read_bytes()
    return window, publish(workdir / "fusion-2.0.0", fusion_model("2.0.0"), "2.0.0")


async def swap_under_load(
    daemon: Daemon, data: bytes, manifest: Path, workdir: Path, rate: float
) -> dict[str, Any]:
    window, new = await asyncio.to_thread(_publish_new_fusion, workdir)
    detect, infer = daemon.url + "/v1/models/m/detect", daemon.url + "/v2/models/fusion/infer"
    load = Load()
    marks: dict[str, float] = {}
    outcome: list[str] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:

        async def swap() -> None:
            await asyncio.sleep(4)
            doc = json.dumps({"models": {"fusion": {"stable": {"source": new}}}})
            await asyncio.to_thread(manifest.write_text, doc)
            marks["start"] = time.monotonic()
            async with http.post(daemon.url + "/v1/admin/sync",
                                 headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                outcome.append(str((await resp.json())["report"].get("fusion")))
            marks["end"] = time.monotonic()

        await asyncio.gather(
            swap(),
            open_loop(http, detect, data, JPEG, rate, 12, load),
            open_loop(http, infer, window, {}, 10, 12, load),
        )
    during = [a.latency_s for a in load.answers
              if marks["start"] <= a.sent_at <= marks["end"] + 1 and a.status == 200]
    steady = [a.latency_s for a in load.answers if a.sent_at < marks["start"] and a.status == 200]
    return {
        "failed": sum(1 for a in load.answers if a.status != 200),
        "p99_during": ms(during, 99), "p99_steady": ms(steady, 99),
        "swap_s": marks["end"] - marks["start"], "outcome": outcome[0] if outcome else "none",
    }


def targets(swap: dict[str, Any]) -> list[Target]:
    ratio = swap["p99_during"] / swap["p99_steady"]
    return [
        Target("swap under load: failed requests", swap["failed"], "0", swap["failed"] == 0,
               f"{swap['outcome']}; the sync took {swap['swap_s']:.2f} s"),
        Target("swap under load: p99 during / steady p99", ratio, "<= 1.5", ratio <= 1.5),
    ]
