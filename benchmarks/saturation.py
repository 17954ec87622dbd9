"""Throughput: bare ``session.run`` flat out (the ceiling), and an open-loop sweep of simulated
cameras against the daemon until it saturates, with its peak RSS meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import aiohttp

from benchmarks.common import JPEG, ms
from benchmarks.load import Load, open_loop, proc_stats
from benchmarks.report import Report, Target
from inference import SessionConfig, YoloV8Detector
from inference.letterbox import to_input
from tests.support import Daemon


def raw_throughput(model: Path, data: bytes, threads: int, seconds: float) -> dict[str, float]:
    """Frames/s of bare ``session.run``: one session with all threads, and one single-threaded
    session per core side by side (what ``batching.instances`` does)."""
    out: dict[str, float] = {}
    for name, sessions, intra in (
        (f"1 session x {threads} threads", 1, threads),
        (f"{threads} sessions x 1 thread", threads, 1),
    ):
        config = SessionConfig(providers=("cpu",), intra_op_threads=intra)
        dets = [YoloV8Detector.load(model, config) for _ in range(sessions)]
        blob = to_input(dets[0].preprocess(data).blob)
        counts = [0] * sessions
        end = time.monotonic() + seconds
        workers = [
            threading.Thread(target=_infer_until, args=(det, blob, end, counts, i))
            for i, det in enumerate(dets)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        out[name] = sum(counts) / seconds
    return out


def _infer_until(
    det: YoloV8Detector, blob: object, end: float, counts: list[int], i: int
) -> None:
    while time.monotonic() < end:
        det.infer([blob])  # type: ignore[list-item]
        counts[i] += 1


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


def sustainable(rows: list[dict[str, float]]) -> float:
    """The saturation throughput of a sweep: its best answered frames/s."""
    return max(r["achieved"] for r in rows)


def targets(
    report: Report, threads: int, peak_rss: int, peer_rss: float | None
) -> list[Target]:
    """Both sweeps' saturation against the best raw throughput; the peak RSS under load."""
    best_raw = max(report.raw_throughput.values())
    one, tuned = sustainable(report.sweep), sustainable(report.sweep_instances)
    return [
        Target("saturation throughput / best raw ORT throughput", one / best_raw, ">= 0.95",
               one / best_raw >= 0.95, f"{one:.1f} vs {best_raw:.1f} frames/s"),
        Target(f"same, with {threads} sessions x 1 thread (batching.instances)",
               tuned / best_raw, ">= 0.95", tuned / best_raw >= 0.95,
               f"{tuned:.1f} frames/s; single-stream p50 {report.instances_p50:.1f} ms"),
        Target("peak RSS under load, detector + fusion (MiB)", peak_rss / 2**20, "<= 200",
               peak_rss / 2**20 <= 200,
               f"Ultralytics peer: {peer_rss / 2**20:.0f} MiB" if peer_rss else ""),
    ]
