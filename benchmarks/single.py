"""Single stream against the floor: raw ``session.run`` with the daemon's thread settings, the
daemon end to end over HTTP, and the peer (Ultralytics ``cv2.imdecode`` + ``YOLO(onnx).predict``
in its own interpreter), interleaved in blocks so machine noise hits all three alike."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from benchmarks.common import ms, post_once
from benchmarks.report import Target
from inference import YoloV8Detector
from inference.letterbox import to_input
from tests.support import Daemon

Measure = Callable[[], Awaitable[float]]


class Peer:
    """Ultralytics in its own interpreter, one frame per ``go``."""

    def __init__(self, python: str, model: Path, frame: Path, imgsz: int) -> None:
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).with_name("peer.py")), str(model), str(frame), str(imgsz)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        seen = []
        while (line := self.proc.stdout.readline()) and line.strip() != "ready":
            seen.append(line.strip())  # Ultralytics' own chatter while it loads
        if not line:
            raise RuntimeError(f"the peer did not start: {seen[-3:]}")

    def ask(self, what: str) -> float:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(what + "\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def find_peer(explicit: str | None) -> tuple[str | None, str]:
    candidates = [explicit] if explicit else [
        os.environ.get("EDGE_BENCH_PEER_PYTHON"), sys.executable, "/opt/refvenv/bin/python"
    ]
    for python in filter(None, candidates):
        ok = subprocess.run([python, "-c", "import ultralytics"], capture_output=True,
                            check=False).returncode == 0 if Path(python).exists() else False
        if ok:
            return python, ""
    return None, (
        "Ultralytics is not installed: the peer is skipped. Install it in a venv of its own "
        "(`pip install ultralytics`) and pass `--peer-python <venv>/bin/python`."
    )


async def interleaved_blocks(
    measures: dict[str, Measure], rounds: int, block: int = 8, settle: int = 2
) -> dict[str, list[float]]:
    """``rounds`` timings of each measure, taken in blocks of ``settle + block`` calls back to
    back, the first ``settle`` of a block not counted; blocks of the measures alternate, in an
    order that rotates.

    Blocks, not single calls in turn: a call right after another process's run pays ~25 ms
    more on these shared 2-vCPU machines (ORT's pool threads and the caches come back cold),
    so per-call alternation inflated the raw floor to above the daemon's end-to-end time.
    """
    names = list(measures)
    out: dict[str, list[float]] = {name: [] for name in names}
    for b in range(-(-rounds // block)):
        shift = b % len(names)
        for name in names[shift:] + names[:shift]:
            for i in range(settle + block):
                took = await measures[name]()
                if i >= settle and len(out[name]) < rounds:
                    out[name].append(took)
    return out


async def single_stream(
    daemon: Daemon, det: YoloV8Detector, data: bytes, peer: Peer | None, rounds: int
) -> dict[str, list[float]]:
    """The floor, the daemon end to end and the peer, in interleaved blocks."""
    blob = to_input(det.preprocess(data).blob)
    url = daemon.url + "/v1/models/m/detect"
    async with aiohttp.ClientSession() as http:

        async def raw() -> float:
            t0 = time.perf_counter()
            det.infer([blob])
            return time.perf_counter() - t0

        async def e2e() -> float:
            return await post_once(http, url, data)

        async def theirs() -> float:
            assert peer is not None
            return await asyncio.to_thread(peer.ask, "go")

        measures: dict[str, Measure] = {"raw": raw, "daemon": e2e}
        if peer:
            measures["peer"] = theirs
        out = await interleaved_blocks(measures, rounds)
    out.setdefault("peer", [])
    return out


def targets(s: dict[str, list[float]]) -> list[Target]:
    """The daemon's single-stream p50 against the floor's and the peer's."""
    ratio = ms(s["daemon"], 50) / ms(s["raw"], 50)
    out = [Target("single-stream e2e p50 / raw session.run p50", ratio, "<= 1.08", ratio <= 1.08)]
    if s["peer"]:
        ratio = ms(s["daemon"], 50) / ms(s["peer"], 50)
        out.append(Target("single-stream e2e p50 / Ultralytics p50", ratio, "<= 0.85",
                          ratio <= 0.85))
    else:
        out.append(Target("single-stream e2e p50 / Ultralytics p50", None, "<= 0.85", None,
                          "peer not installed"))
    return out
