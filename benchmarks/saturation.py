"""Throughput: an open-loop sweep of simulated
cameras against the daemon until it saturates, with its peak RSS meanwhile; and a closed-loop
sweep (cameras that post the next frame when the answer arrives), retrying a 503 at once or
after its ``Retry-After``, with what each refusal cost the daemon's event loop."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.common import JPEG, ms
from benchmarks.load import (
    RETRY_AFTER,
    RETRY_AT_ONCE,
    Load,
    closed_loop,
    cpu_seconds,
    open_loop,
    proc_stats,
)
from benchmarks.report import Report, Target
from tests.support import Daemon


async def load_step(
    http: aiohttp.ClientSession, daemon: Daemon, data: bytes, rate: float, seconds: float,
    rss_every_s: float = 0.5,
) -> tuple[dict[str, float], int]:
    """``rate`` frames/s open-loop for ``seconds``: the answered rate, latency percentiles and
    shares, and the daemon's peak RSS meanwhile."""
    load = Load()
    rss: list[int] = []

    async def watch() -> None:
        while True:
            rss.append(proc_stats(daemon.proc.pid)["rss"])
            await asyncio.sleep(rss_every_s)

    watcher = asyncio.create_task(watch())
    await open_loop(http, daemon.url + "/v1/models/m/detect", data, JPEG, rate, seconds, load)
    watcher.cancel()
    ok = [a.latency_s for a in load.answers if a.status == 200]
    shed = sum(1 for a in load.answers if a.status == 503)
    row = {
        "offered": rate, "achieved": len(ok) / seconds,
        "p50": ms(ok, 50), "p95": ms(ok, 95), "p99": ms(ok, 99),
        "shed": shed / max(1, len(load.answers)),
        "other": sum(1 for a in load.answers if a.status not in (200, 503)),
    }
    return row, max(rss)


async def sweep(
    daemon: Daemon, data: bytes, fps: float, cameras: list[int], seconds: float
) -> tuple[list[dict[str, float]], int]:
    rows = []
    peak_rss = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
        saturated = 0
        for n in cameras:
            row, rss = await load_step(http, daemon, data, n * fps, seconds)
            peak_rss = max(peak_rss, rss)
            rows.append({"cameras": n, **row})
            print(f"  {n:3d} cameras: {rows[-1]['achieved']:5.1f} fps, p50 {rows[-1]['p50']:6.0f}"
                  f" p99 {rows[-1]['p99']:6.0f} ms, shed {100 * rows[-1]['shed']:.0f}%", flush=True)
            if rows[-1]["shed"] > 0.2:
                saturated += 1
                if saturated >= 2:
                    break
    return rows, peak_rss


# (cameras, how a camera retries a 503): one camera never sees a 503, so it runs once.
CLOSED_LOOP_STEPS = (
    (1, RETRY_AFTER),
    *((n, retry) for n in (2, 4, 8) for retry in (RETRY_AFTER, RETRY_AT_ONCE)),
    (16, RETRY_AT_ONCE),  # beyond max_queue: a storm of refusals, for their CPU cost
)


async def closed_loop_step(
    http: aiohttp.ClientSession, daemon: Daemon, data: bytes, cameras: int, retry: str,
    seconds: float, settle_s: float,
) -> dict[str, Any]:
    """``cameras`` closed-loop cameras for ``settle_s`` + ``seconds``; figures over the last
    ``seconds``: answered frames/s, 503s, failed connections, latency, peak RSS, and the CPU
    time of the daemon (all threads, and its event loop alone)."""
    load = Load()
    rss: list[int] = []
    pid = daemon.proc.pid
    marks: dict[str, float] = {}

    async def watch() -> None:
        await asyncio.sleep(settle_s)
        marks.update(start=time.monotonic(), cpu=cpu_seconds(pid), loop=cpu_seconds(pid, pid))
        while True:
            rss.append(proc_stats(pid)["rss"])
            await asyncio.sleep(0.5)

    switches = await relayouts(http, daemon)
    watcher = asyncio.create_task(watch())
    await closed_loop(http, daemon.url + "/v1/models/m/detect", data, JPEG, cameras,
                      settle_s + seconds, load, retry)
    end = time.monotonic()
    watcher.cancel()
    async with http.get(daemon.url + "/v1/models") as resp:
        layout = next(m for m in (await resp.json())["models"] if m["name"] == "m")["threads"]
    window = load.between(marks["start"], end)
    span = end - marks["start"]
    ok = [a.latency_s for a in window if a.status == 200]
    return {
        "cameras": cameras, "retry": retry, "fps": len(ok) / span,
        "refused": sum(1 for a in window if a.status == 503),
        "errors": sum(1 for a in window if a.status == 0),
        "other": sum(1 for a in window if a.status not in (0, 200, 503)),
        "answered": len(ok), "p50": ms(ok, 50), "p99": ms(ok, 99),
        "peak_rss": max(rss, default=0), "seconds": span,
        "cpu_s": cpu_seconds(pid) - marks["cpu"],
        "loop_cpu_s": cpu_seconds(pid, pid) - marks["loop"],
        "layout": layout["layout"], "switched": await relayouts(http, daemon) > switches,
    }


async def relayouts(http: aiohttp.ClientSession, daemon: Daemon) -> int:
    """How often the detector's thread layout has switched (its ``/metrics`` counter)."""
    async with http.get(daemon.url + "/metrics") as resp:
        text = await resp.text()
    return sum(int(float(s.value)) for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "edge_batcher_events_total"
               and s.labels.get("model") == "m" and s.labels.get("event") == "relayout")


async def closed_loop_sweep(
    daemon: Daemon, data: bytes, seconds: float, settle_s: float = 2.0
) -> list[dict[str, Any]]:
    rows = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        for cameras, retry in CLOSED_LOOP_STEPS:
            row = await closed_loop_step(http, daemon, data, cameras, retry, seconds, settle_s)
            rows.append(row)
            print(f"  {cameras:2d} cameras, retry {retry:11s}: {row['fps']:5.1f} fps, p50 "
                  f"{row['p50']:5.0f} p99 {row['p99']:5.0f} ms, 503s {row['refused']}, "
                  f"failed connections {row['errors']}", flush=True)
    return rows


def refusal_cost_s(rows: list[dict[str, Any]]) -> float | None:
    """Event-loop CPU seconds per refusal: the storm's loop CPU less what its answered frames
    cost at the rate of the same cameras' refusal-free run, over its refusals."""
    storm = next((r for r in rows if r["retry"] == RETRY_AT_ONCE and r["refused"]), None)
    calm = [r for r in rows if not r["refused"] and r["answered"]]
    if storm is None or not calm:
        return None
    per_frame = max(calm, key=lambda r: r["cameras"])
    loop_per_frame = per_frame["loop_cpu_s"] / per_frame["answered"]
    return max(0.0, storm["loop_cpu_s"] - storm["answered"] * loop_per_frame) / storm["refused"]


def sustainable(rows: list[dict[str, float]]) -> float:
    """The saturation throughput of a sweep: its best answered frames/s."""
    return max(r["achieved"] for r in rows)


def targets(report: Report, instances: int, max_queue: int, open_loop_rss: int,
            peer_rss: float | None) -> list[Target]:
    """Saturation against the pipeline floor; closed-loop cameras never refused; goodput under
    a retry storm; what a refusal costs; peak RSS against the bare process and for the bundled
    models."""
    floor = report.floor["fps"]
    closed = report.closed_loop
    best = max([sustainable(report.sweep), *(r["fps"] for r in closed)])
    one = next(r for r in closed if r["cameras"] == 1)
    queue_full = [r for r in closed if r["cameras"] <= max_queue and r["cameras"] > 1]
    refused = sum(r["refused"] for r in queue_full)
    storm = next((r for r in closed if r["cameras"] == 4 * instances
                  and r["retry"] == RETRY_AT_ONCE), None)
    cost = refusal_cost_s(closed)
    settled = max(r["peak_rss"] for r in closed if not r["switched"])
    peak = max(open_loop_rss, *(r["peak_rss"] for r in closed))
    bare = report.bare["peak_rss"]
    out = [
        Target("saturation throughput / in-process pipeline floor", best / floor, ">= 0.95",
               best / floor >= 0.95,
               f"{best:.1f} vs {floor:.1f} frames/s (floor: decode + letterbox + run, one "
               f"single-threaded session per core, no HTTP)"),
        Target(f"closed-loop cameras, 2..{max_queue} (max_queue): 503s", refused, "0",
               refused == 0, "both retry modes"),
    ]
    if storm is not None:
        ratio = storm["fps"] / one["fps"]
        out.append(Target(
            f"{storm['cameras']} cameras retrying a 503 at once (4x the {instances} instances):"
            " frames/s / one camera's", ratio, ">= 0.9; no failed connections",
            ratio >= 0.9 and storm["errors"] == 0,
            f"{storm['fps']:.1f} vs {one['fps']:.1f} frames/s; {storm['refused']} 503s, "
            f"{storm['errors']} failed connections"))
    out += [
        Target("event-loop CPU per refusal (ms)", None if cost is None else 1000 * cost,
               "< 1 ms", None if cost is None else cost < 0.001,
               "no refusals to measure" if cost is None else
               f"16 cameras retrying at once: {max(r['refused'] for r in closed)} 503s"),
        Target("peak RSS under camera load / bare process running the same model", settled / bare,
               "<= 1.3", settled / bare <= 1.3,
               f"{settled / 2**20:.0f} vs {bare / 2**20:.0f} MiB (closed-loop steps where the "
               f"thread layout did not switch; bare: one session called from "
               f"{report.bare['threads']} threads, decode + letterbox + run)"
               + (f"; Ultralytics peer {peer_rss / 2**20:.0f} MiB" if peer_rss else "")),
        Target("same, every step, thread-layout switches included", peak / bare, "—", None,
               f"{peak / 2**20:.0f} MiB: a switch holds the old session until the new one "
               f"serves, as a model swap holds two versions"),
    ]
    if report.bundled_peak_rss:
        mib = report.bundled_peak_rss / 2**20
        out.append(Target("peak RSS, the two bundled models under camera load (MiB)", mib,
                          "<= 200", mib <= 200, "defects + fusion, 4 closed-loop cameras"))
    return out
