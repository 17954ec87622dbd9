"""``python -m benchmarks latency``: one 1080p frame end to end vs raw ``session.run``.

Both are measured in the same run, interleaved round by round (one raw run, one HTTP request),
with the same ONNX Runtime thread count, so machine noise hits both alike. The daemon runs as
its own process, as in production; the client is a plain keep-alive HTTP session.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support import Daemon  # noqa: E402  (the tests' process helper)

from inference import SessionConfig, YoloV8Detector  # noqa: E402

DEFAULT_MODEL = ROOT / "tests/fixtures/models/yolov8n-coco-random.onnx"
DEFAULT_FRAME = ROOT / "tests/fixtures/images/astronaut-1080p.jpg"


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


async def latency(
    data: bytes, model: Path, frame: Path, threads: int, rounds: int, warmup: int
) -> None:
    det = YoloV8Detector.load(model, SessionConfig(providers=("cpu",), intra_op_threads=threads))
    blob = det.preprocess(data).blob
    daemon = Daemon(
        [
            "--model",
            f"m={model}",
            "--intra-op-threads",
            str(threads),
            "--providers",
            "cpu",
            "--state-dir",
            "/tmp/edge-agent-bench-state",
        ],
        env={"EDGE_AGENT_RUNTIME__PREPROCESS_THREADS": str(threads)},
    )
    raw: list[float] = []
    e2e: list[float] = []
    server: list[dict[str, float]] = []
    try:
        await daemon.wait_ready()
        url = daemon.url + "/v1/models/m/detect"
        async with aiohttp.ClientSession() as http:
            for i in range(warmup + rounds):
                t0 = time.perf_counter()
                det.infer([blob])
                t1 = time.perf_counter()
                async with http.post(url, data=data, headers={"Content-Type": "image/jpeg"}) as r:
                    body = await r.json()
                    assert r.status == 200, body
                t2 = time.perf_counter()
                if i >= warmup:
                    raw.append(t1 - t0)
                    e2e.append(t2 - t1)
                    server.append(body["timing_ms"])
    finally:
        daemon.stop()
    print(
        f"model {model.name}, frame {frame.name} ({len(data) // 1024} KB), "
        f"intra_op_threads={threads}, {rounds} interleaved rounds, cores={os.cpu_count()}"
    )
    print(f"{'':28s} {'p50 ms':>8s} {'p95 ms':>8s}")
    print(f"{'raw session.run':28s} {pct(raw, 50):8.2f} {pct(raw, 95):8.2f}")
    print(f"{'daemon end to end (HTTP)':28s} {pct(e2e, 50):8.2f} {pct(e2e, 95):8.2f}")
    for stage in ("queue", "preprocess", "inference", "postprocess", "total"):
        med = statistics.median(s[stage] for s in server)
        print(f"{'  server ' + stage:28s} {med:8.2f}")
    print(f"ratio e2e/raw p50: {pct(e2e, 50) / pct(raw, 50):.3f}  (target <= 1.08)")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lat = sub.add_parser("latency", help="single-stream 1080p latency vs raw session.run")
    lat.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    lat.add_argument("--frame", type=Path, default=DEFAULT_FRAME)
    lat.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    lat.add_argument("--rounds", type=int, default=60)
    lat.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()
    if args.cmd == "latency":
        asyncio.run(
            latency(
                args.frame.read_bytes(),
                args.model,
                args.frame,
                args.threads,
                args.rounds,
                args.warmup,
            )
        )


if __name__ == "__main__":
    main()
