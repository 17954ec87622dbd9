"""Sliding-window statistics with bounded memory: quantiles, maxima and rates.

The window is cut into ``slices`` equal time slices; a sample goes into the current slice, and a
read merges the slices younger than the window. So the window slides in steps of
``window / slices`` (5 s of a 60 s window by default), and memory is ``slices`` small
structures whatever the request rate.

Quantiles come from DDSketch (Datadog's ``ddsketch`` package, the reference implementation of
Masson et al., VLDB 2019): log-spaced buckets give every quantile within ``relative_accuracy``
(1 %) of the exact sample quantile; slices merge exactly because they share one bucket mapping.
``LogCollapsingLowestDenseDDSketch`` caps the buckets (2048 span 1 µs to days at 1 %).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ddsketch import LogCollapsingLowestDenseDDSketch

RELATIVE_ACCURACY = 0.01
BIN_LIMIT = 2048

Clock = Callable[[], float]


def _sketch() -> LogCollapsingLowestDenseDDSketch:
    return LogCollapsingLowestDenseDDSketch(RELATIVE_ACCURACY, BIN_LIMIT)


@dataclass(frozen=True)
class WindowSummary:
    count: int
    sum: float
    quantiles: dict[float, float]  # empty when the window holds no sample


class _Slices:
    """Time slicing shared by the window types: which slice is current, which are too old."""

    def __init__(self, window_s: float, slices: int, clock: Clock) -> None:
        if window_s <= 0 or slices < 1:
            raise ValueError("window_s must be > 0 and slices >= 1")
        self.window_s = window_s
        self.width = window_s / slices
        self.slices = slices
        self.clock = clock

    def index(self, now: float) -> int:
        return math.floor(now / self.width)

    def expire(self, store: dict[int, Any], now: float) -> None:
        """Drop the slices that have left the window."""
        oldest = self.index(now) - self.slices
        for index in [i for i in store if i <= oldest]:
            del store[index]


class SlidingQuantiles:
    """Quantiles, count and sum of the samples seen in the last ``window_s`` seconds."""

    def __init__(
        self, window_s: float = 60.0, slices: int = 12, clock: Clock = time.monotonic
    ) -> None:
        self._t = _Slices(window_s, slices, clock)
        self._slices: dict[int, LogCollapsingLowestDenseDDSketch] = {}

    def add(self, value: float) -> None:
        if not math.isfinite(value) or value < 0:
            return  # a duration is never negative; a clock oddity must not poison the sketch
        now = self._t.clock()
        index = self._t.index(now)
        sketch = self._slices.get(index)
        if sketch is None:
            self._t.expire(self._slices, now)
            sketch = self._slices[index] = _sketch()
        sketch.add(value)

    def summary(self, quantiles: tuple[float, ...] = (0.5, 0.95, 0.99)) -> WindowSummary:
        now = self._t.clock()
        self._t.expire(self._slices, now)
        merged = _sketch()
        for sketch in self._slices.values():
            merged.merge(sketch)
        if merged.count == 0:
            return WindowSummary(0, 0.0, {})
        values = {q: float(merged.get_quantile_value(q) or 0.0) for q in quantiles}
        return WindowSummary(int(merged.count), float(merged.sum), values)


class SlidingMax:
    """The largest value set in the last ``window_s`` seconds (e.g. queue depth)."""

    def __init__(
        self, window_s: float = 60.0, slices: int = 12, clock: Clock = time.monotonic
    ) -> None:
        self._t = _Slices(window_s, slices, clock)
        self._slices: dict[int, float] = {}

    def observe(self, value: float) -> None:
        now = self._t.clock()
        index = self._t.index(now)
        if index not in self._slices:
            self._t.expire(self._slices, now)
        self._slices[index] = max(self._slices.get(index, value), value)

    def value(self) -> float:
        self._t.expire(self._slices, self._t.clock())
        return max(self._slices.values(), default=0.0)


class SlidingRate:
    """Events per second over the last ``window_s`` seconds (or since start, if younger)."""

    def __init__(
        self, window_s: float = 60.0, slices: int = 12, clock: Clock = time.monotonic
    ) -> None:
        self._t = _Slices(window_s, slices, clock)
        self._slices: dict[int, int] = {}
        self._started = clock()

    def add(self, count: int = 1) -> None:
        now = self._t.clock()
        index = self._t.index(now)
        if index not in self._slices:
            self._t.expire(self._slices, now)
        self._slices[index] = self._slices.get(index, 0) + count

    def per_second(self) -> float:
        now = self._t.clock()
        self._t.expire(self._slices, now)
        # The window covers the live slices: the current one only up to now.
        oldest = (self._t.index(now) - self._t.slices + 1) * self._t.width
        span = now - max(oldest, self._started)
        return sum(self._slices.values()) / span if span > 0 else 0.0
