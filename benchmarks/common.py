"""What every benchmark job shares: the default model and frame, where results go, the machine
line of a report, and one timed detect request."""

from __future__ import annotations

import os
import platform
import time
from datetime import date
from pathlib import Path

import aiohttp
import onnxruntime as ort

from benchmarks.load import percentile

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "tests/fixtures/models/yolov8n-coco-random.onnx"
DEFAULT_FRAME = ROOT / "tests/fixtures/images/astronaut-1080p.jpg"
RESULTS = ROOT / "benchmarks" / "results"
JPEG = {"Content-Type": "image/jpeg"}
TOKEN = "bench-token"


def ms(values: list[float], q: float) -> float:
    return 1000 * percentile(values, q)


def machine() -> dict[str, str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )
    return {
        "cpu": cpu,
        "cores": str(len(os.sched_getaffinity(0))),
        "onnxruntime": ort.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
        "date": date.today().isoformat(),
    }


def write_report(text: str, out: Path) -> None:
    """A report: written to ``out`` and printed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    print(f"written: {out}")


async def post_once(http: aiohttp.ClientSession, url: str, data: bytes) -> float:
    """Seconds for one detect request; anything but 200 is an error."""
    t0 = time.perf_counter()
    async with http.post(url, data=data, headers=JPEG) as resp:
        await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}: the daemon answered {resp.status}")
    return time.perf_counter() - t0
