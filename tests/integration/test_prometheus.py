"""A real Prometheus server scrapes the real daemon's /metrics/summary and reads back exactly
the quantiles the daemon computed."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support import (
    TINY_MODEL,
    Daemon,
    image_bytes,
    require,
    start_prometheus,
    stop_process,
)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(["--state-dir", str(tmp_path / "state"), "--model", f"tiny={TINY_MODEL}"])
    try:
        asyncio.run(d.wait_ready())
        yield d
    finally:
        d.stop()


@pytest.fixture
def prometheus(tmp_path: Path, daemon: Daemon) -> Iterator[str]:
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus (apt-get install prometheus)")
    assert binary is not None
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: edge-agent\n"
        "    metrics_path: /metrics/summary\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{daemon.port}']}}]\n"
    )
    proc, url = start_prometheus(binary, config, tmp_path / "tsdb")
    try:
        yield url
    finally:
        stop_process(proc, 10)


async def query(http: aiohttp.ClientSession, url: str, promql: str) -> list[dict]:
    async with http.get(f"{url}/api/v1/query?query={urllib.parse.quote(promql)}") as resp:
        body = await resp.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


async def test_prometheus_reads_back_the_daemons_p99(daemon: Daemon, prometheus: str):
    frame = image_bytes("coffee-600x400.jpg")
    async with aiohttp.ClientSession() as http:
        for _ in range(20):
            async with http.post(daemon.url + "/v1/models/tiny/detect", data=frame,
                                 headers={"Content-Type": "image/jpeg"}) as resp:
                assert resp.status == 200
        async with http.get(daemon.url + "/metrics/summary") as resp:
            text = await resp.text()
        computed = {
            s.labels["quantile"]: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "edge_inference_latency_seconds"
        }
        # Nothing else reaches the daemon now: every later scrape serves these same numbers
        # (the window is 60 s). Wait until Prometheus has scraped one of them.
        end = time.monotonic() + 60
        result: list[dict] = []
        while time.monotonic() < end:
            result = await query(http, prometheus,
                                 'edge_inference_latency_seconds{quantile="0.99"}')
            if result:
                break
            await asyncio.sleep(0.5)
        assert result, "Prometheus never scraped the daemon"
        (series,) = result
        assert series["metric"]["model"] == "tiny"
        assert series["metric"]["job"] == "edge-agent"
        assert float(series["value"][1]) == computed["0.99"]
        up = await query(http, prometheus, 'up{job="edge-agent"}')
        assert [float(s["value"][1]) for s in up] == [1.0]
        count = await query(http, prometheus, "edge_inference_latency_seconds_count")
        assert float(count[0]["value"][1]) == 20
        # What the fleet pays for each node: a few dozen series.
        scraped = await query(http, prometheus, "scrape_samples_scraped")
        assert 0 < float(scraped[0]["value"][1]) <= 40, json.dumps(scraped)
