"""One 1080p frame end to end through the daemon vs raw ``session.run``, interleaved.

Both are measured in the same run, round by round (one raw run, one HTTP request), with the same
providers and ONNX Runtime thread count, so machine noise hits both alike. The daemon runs as its
own process, as in production; the client is one keep-alive HTTP session.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import aiohttp
import numpy as np

from inference import SessionConfig, YoloV8Detector
from inference.letterbox import to_input
from tests.support import Daemon  # the tests' helper that runs the daemon as a process

STAGES = ("queue", "preprocess", "inference", "postprocess", "total")


def ms_pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


async def measure(
    data: bytes, model: Path, threads: int, rounds: int, warmup: int, providers: list[str]
) -> dict[str, object]:
    det = YoloV8Detector.load(
        model, SessionConfig(providers=tuple(providers), intra_op_threads=threads)
    )
    blob = to_input(det.preprocess(data).blob)
    daemon = Daemon(
        [
            "--model",
            f"m={model}",
            "--intra-op-threads",
            str(threads),
            "--providers",
            ",".join(providers),
            "--state-dir",
            "/tmp/edge-agent-bench-state",
        ],
        env={"EDGE_AGENT_RUNTIME__PREPROCESS_THREADS": str(threads)},
    )
    raw: list[float] = []
    e2e: list[float] = []
    server: list[dict[str, float]] = []
    try:
        await daemon.wait_ready(timeout=600)  # a TensorRT engine build takes minutes
        url = daemon.url + "/v1/models/m/detect"
        async with aiohttp.ClientSession() as http:
            for i in range(warmup + rounds):
                t0 = time.perf_counter()
                det.infer([blob])
                t1 = time.perf_counter()
                async with http.post(url, data=data, headers={"Content-Type": "image/jpeg"}) as r:
                    body = await r.json()
                    if r.status != 200:
                        raise RuntimeError(f"daemon answered {r.status}: {body}")
                t2 = time.perf_counter()
                if i >= warmup:
                    raw.append(t1 - t0)
                    e2e.append(t2 - t1)
                    server.append(body["timing_ms"])
    finally:
        daemon.stop()
    return {
        "provider": det.provider,
        "raw": raw,
        "e2e": e2e,
        "server": {s: statistics.median(x[s] for x in server) for s in STAGES},
    }


def report(result: dict, model: Path, frame: Path, size: int, threads: int, rounds: int) -> None:
    raw, e2e = result["raw"], result["e2e"]
    print(
        f"model {model.name}, frame {frame.name} ({size // 1024} KB), provider "
        f"{result['provider']}, intra_op_threads={threads}, {rounds} interleaved rounds"
    )
    print(f"{'':28s} {'p50 ms':>8s} {'p95 ms':>8s}")
    print(f"{'raw session.run':28s} {ms_pct(raw, 50):8.2f} {ms_pct(raw, 95):8.2f}")
    print(f"{'daemon end to end (HTTP)':28s} {ms_pct(e2e, 50):8.2f} {ms_pct(e2e, 95):8.2f}")
    for stage, med in result["server"].items():
        print(f"{'  server ' + stage:28s} {med:8.2f}")
    print(f"ratio e2e/raw p50: {ms_pct(e2e, 50) / ms_pct(raw, 50):.3f}  (target <= 1.08)")
