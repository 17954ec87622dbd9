"""Sliding-window quantiles against exact numpy percentiles; expiry; bounded memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.metrics.window import (
    BIN_LIMIT,
    RELATIVE_ACCURACY,
    SlidingMax,
    SlidingQuantiles,
    SlidingRate,
)

QS = (0.5, 0.95, 0.99)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def assert_within_one_percent(window: SlidingQuantiles, samples: list[float]) -> None:
    summary = window.summary(QS)
    assert summary.count == len(samples)
    assert abs(summary.sum - sum(samples)) <= 1e-9 * max(1.0, sum(samples))
    for q in QS:
        # DDSketch answers for rank q*(n-1), rounded down: numpy's "lower" percentile.
        exact = float(np.quantile(np.array(samples), q, method="lower"))
        assert abs(summary.quantiles[q] - exact) <= RELATIVE_ACCURACY * exact * (1 + 1e-9), (
            q, summary.quantiles[q], exact)


latencies = st.floats(min_value=1e-6, max_value=100.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.lists(latencies, min_size=1, max_size=400))
def test_quantiles_are_within_one_percent_of_exact(samples):
    window = SlidingQuantiles(60, clock=FakeClock())
    for s in samples:
        window.add(s)
    assert_within_one_percent(window, samples)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=200), st.lists(latencies, max_size=50)),
        min_size=1,
        max_size=20,
    )
)
def test_bursts_over_time_count_only_the_live_window(bursts):
    """Bursts at arbitrary times: the answer is the exact quantile of the samples whose slice
    is still inside the window (a slice is 5 s of the 60 s window)."""
    clock = FakeClock()
    window = SlidingQuantiles(60, slices=12, clock=clock)
    stamped: list[tuple[float, float]] = []
    t = clock.now
    for gap, values in bursts:
        t += gap
        clock.now = t
        for v in values:
            window.add(v)
            stamped.append((t, v))
    width = 5.0
    live_from = (np.floor(clock.now / width) - 11) * width
    live = [v for ts, v in stamped if ts >= live_from]
    if live:
        assert_within_one_percent(window, live)
    else:
        assert window.summary(QS).count == 0


def test_an_empty_window_has_no_quantiles_and_old_samples_leave():
    clock = FakeClock()
    window = SlidingQuantiles(60, clock=clock)
    empty = window.summary(QS)
    assert (empty.count, empty.sum, empty.quantiles) == (0, 0.0, {})
    window.add(0.05)
    clock.now += 30
    assert window.summary(QS).count == 1
    clock.now += 31
    assert window.summary(QS).count == 0
    window.add(float("nan"))
    window.add(-1.0)
    assert window.summary(QS).count == 0


def test_memory_stays_bounded_under_a_million_samples():
    clock = FakeClock()
    window = SlidingQuantiles(60, clock=clock)
    rng = np.random.default_rng(0)
    values = rng.lognormal(np.log(0.05), 2.0, 1_000_000)  # 1 µs .. minutes, heavy tails
    tracemalloc.start()
    for i, v in enumerate(values):
        if i % 100_000 == 0:
            clock.now += 1  # a million samples inside one window
            if i == 100_000:
                base, _ = tracemalloc.get_traced_memory()
        window.add(float(v))
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert current - base < 256 * 1024, current - base
    for sketch in window._slices.values():
        assert sketch._store.length() <= BIN_LIMIT
    summary = window.summary(QS)
    assert summary.count == 1_000_000
    exact = float(np.quantile(values, 0.99, method="lower"))
    assert abs(summary.quantiles[0.99] - exact) <= RELATIVE_ACCURACY * exact


def test_window_max_and_rate():
    clock = FakeClock()
    depth = SlidingMax(60, clock=clock)
    rate = SlidingRate(60, clock=clock)
    assert depth.value() == 0.0
    assert rate.per_second() == 0.0
    for d in (1, 5, 2):
        depth.observe(d)
    clock.now += 10
    rate.add(20)
    assert depth.value() == 5
    assert rate.per_second() == 2.0  # 20 events in the 10 s since start
    clock.now += 70
    assert depth.value() == 0.0
    assert rate.per_second() == 0.0
