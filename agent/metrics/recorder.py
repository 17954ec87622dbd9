"""What the daemon measures about each model's requests, kept on the event loop (no locks).

Per model: sliding-window quantiles of the end-to-end latency and of each stage, the window's
queue-depth maximum and throughput (``window.py``); since start: requests by status code,
rejections by reason, fixed-bucket latency histograms (aggregatable across nodes) and frames
per camera, with the number of distinct cameras capped so a misconfigured client cannot grow
the series without bound.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field

from agent.metrics.window import Clock, SlidingMax, SlidingQuantiles, SlidingRate

STAGES = ("queue", "preprocess", "inference", "postprocess")
# Seconds: 1 ms .. 10 s, dense where edge inference lives (5-200 ms).
BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
OTHER_CAMERA = "other"


@dataclass
class Histogram:
    """Cumulative-ready fixed-bucket counts (Prometheus ``le`` buckets, +Inf last)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class ModelStats:
    def __init__(self, window_s: float, clock: Clock) -> None:
        self.latency = SlidingQuantiles(window_s, clock=clock)
        self.stages = {stage: SlidingQuantiles(window_s, clock=clock) for stage in STAGES}
        self.queue_max = SlidingMax(window_s, clock=clock)
        self.throughput = SlidingRate(window_s, clock=clock)
        self.latency_histogram = Histogram()
        self.stage_histograms = {stage: Histogram() for stage in STAGES}
        self.codes: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()

    def observe(self, code: int, timing_s: dict[str, float] | None) -> None:
        self.codes[str(code)] += 1
        if timing_s is None:
            return
        total = timing_s.get("total")
        if total is not None:
            self.latency.add(total)
            self.latency_histogram.observe(total)
            self.throughput.add()
        for stage in STAGES:
            value = timing_s.get(stage)
            if value is not None:
                self.stages[stage].add(value)
                self.stage_histograms[stage].observe(value)


class Recorder:
    """Every model's stats, plus per-camera frame counts (bounded)."""

    def __init__(
        self,
        models: list[str],
        window_s: float = 60.0,
        max_cameras: int = 64,
        clock: Clock = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.max_cameras = max_cameras
        self.models = {name: ModelStats(window_s, clock) for name in models}
        self.cameras: Counter[tuple[str, str]] = Counter()
        self._camera_names: set[str] = set()

    def observe_request(
        self, model: str, code: int, timing_s: dict[str, float] | None, camera: str = ""
    ) -> None:
        stats = self.models.get(model)
        if stats is None:
            return  # not a configured model: its name is the client's, not a label we keep
        stats.observe(code, timing_s)
        if camera:
            self.cameras[(model, self._camera_label(camera))] += 1

    def observe_rejection(self, model: str, reason: str) -> None:
        stats = self.models.get(model)
        if stats is not None:
            stats.rejected[reason] += 1

    def observe_queue(self, model: str, depth: int) -> None:
        stats = self.models.get(model)
        if stats is not None:
            stats.queue_max.observe(depth)

    def _camera_label(self, camera: str) -> str:
        if camera in self._camera_names:
            return camera
        if len(self._camera_names) < self.max_cameras:
            self._camera_names.add(camera)
            return camera
        return OTHER_CAMERA
