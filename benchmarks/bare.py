"""The in-process pipeline with nothing else in the process: ``python -m benchmarks.bare``.

One thread per core decodes a JPEG, letterboxes it and runs the model, flat out, for a few
seconds: no HTTP, no event loop, no queue. Its frames/s is the **pipeline floor** the daemon's
saturation throughput is held against, and its peak RSS is the **bare process** the daemon's
memory is held against. It runs in its own interpreter so that its RSS is its own.

``--sessions per-core``: one single-threaded session per thread (the floor as defined in the
performance targets); ``shared``: one single-threaded session called from every thread at once
(the daemon's narrow layout, the fair baseline for memory). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from inference import SessionConfig, YoloV8Detector


def pipeline(model: Path, frame: Path, threads: int, sessions: str, seconds: float) -> dict:
    config = SessionConfig(providers=("cpu",), intra_op_threads=1)
    count = threads if sessions == "per-core" else 1
    dets = [YoloV8Detector.load(model, config) for _ in range(count)]
    data = frame.read_bytes()
    for det in dets:
        det.warmup()
    done = [0] * threads
    end = time.monotonic() + seconds

    def work(i: int) -> None:
        det = dets[i % len(dets)]
        while time.monotonic() < end:
            prepared = det.preprocess(data)
            det.infer([prepared.blob])
            done[i] += 1

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    status = Path("/proc/self/status").read_text()
    peak_kib = int(status.split("VmHWM:")[1].split()[0])
    return {"fps": sum(done) / seconds, "peak_rss": peak_kib * 1024, "sessions": sessions,
            "threads": threads}


def measure(model: Path, frame: Path, threads: int, sessions: str, seconds: float = 5.0) -> dict:
    """Run :func:`pipeline` in a fresh interpreter; its JSON result."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.bare", "--model", str(model), "--frame", str(frame),
         "--threads", str(threads), "--sessions", sessions, "--seconds", str(seconds)],
        capture_output=True, text=True, timeout=300, check=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--frame", type=Path, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--sessions", choices=("per-core", "shared"), default="per-core")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps(pipeline(args.model, args.frame, args.threads, args.sessions,
                              args.seconds)))


if __name__ == "__main__":
    main()
