"""The benchmark report: every target gets a row with its verdict, the sweep its table."""

from __future__ import annotations

import pytest
from support import COCO_MODEL, IMAGES

from benchmarks.report import Report, Target, render
from benchmarks.saturation import refusal_cost_s, targets


def test_render_lists_targets_with_verdicts_and_the_sweeps():
    report = Report(
        {"cpu": "Test CPU", "cores": "2", "onnxruntime": "1.0", "python": "3.11", "host": "h",
         "date": "2026-11-27"},
        single={"raw": [0.050, 0.052], "daemon": [0.055, 0.056], "peer": []},
        floor={"fps": 20.0, "peak_rss": 200 * 2**20, "threads": 2},
        bare={"fps": 19.5, "peak_rss": 180 * 2**20, "threads": 2},
        closed_loop=[_row(1, "Retry-After", 12.0), _row(16, "at once", 11.0, refused=300)],
        sweep=[{"cameras": 1, "offered": 2.0, "achieved": 2.0, "p50": 60, "p95": 70, "p99": 80,
                "shed": 0.0, "other": 0}],
        targets=[Target("ratio", 1.07, "<= 1.08", True), Target("peer", None, "<= 0.85", None,
                                                                  "peer not installed"),
                 Target("rss", 288.0, "<= 200", False)],
        notes=["Ultralytics is not installed: the peer is skipped."],
    )
    text = render(report, COCO_MODEL, IMAGES / "astronaut-1080p.jpg", 40)
    assert "Test CPU, 2 usable cores" in text
    assert "| ratio | 1.07 | <= 1.08 | yes |  |" in text
    assert "| peer | — | <= 0.85 | — | peer not installed |" in text
    assert "| rss | 288.00 | <= 200 | **no** |  |" in text
    assert "| raw `session.run` (floor) | 51.0 |" in text
    assert "Ultralytics imdecode" not in text  # no peer rows without peer figures
    assert "| 1 | 2.0 | 2.0 | 60 | 70 | 80 | 0% |" in text
    assert "- Ultralytics is not installed: the peer is skipped." in text
    assert "floor (decode + letterbox + run, one thread per core, no HTTP): 20.0 frames/s" in text
    assert "| 16 | at once | 11.0 | 60 | 90 | 300 | 0 | 9.0 | 3.00 | 150 | narrow |" in text


def _row(cameras: int, retry: str, fps: float, refused: int = 0, loop: float = 3.0) -> dict:
    return {"cameras": cameras, "retry": retry, "fps": fps, "refused": refused, "errors": 0,
            "other": 0, "answered": int(fps * 10), "p50": 60.0, "p99": 90.0,
            "peak_rss": 150 * 2**20, "seconds": 10.0, "cpu_s": 9.0, "loop_cpu_s": loop,
            "layout": "narrow", "switched": False}


def test_a_refusal_costs_the_loop_cpu_beyond_what_its_answered_frames_cost():
    calm = _row(8, "Retry-After", 12.0, loop=1.2)  # 120 frames: 10 ms of loop CPU each
    storm = _row(16, "at once", 11.0, refused=1000, loop=2.1)  # 110 frames: 1.1 s, + 1.0 s
    assert refusal_cost_s([calm, storm]) == pytest.approx(0.001)
    assert refusal_cost_s([calm]) is None  # no refusals to measure


def test_targets_hold_saturation_to_the_floor_and_memory_to_the_bare_process():
    report = Report(
        {}, floor={"fps": 20.0, "peak_rss": 0, "threads": 2},
        bare={"fps": 20.0, "peak_rss": 100 * 2**20, "threads": 2},
        sweep=[{"cameras": 8, "offered": 16.0, "achieved": 15.0}],
        closed_loop=[_row(1, "Retry-After", 14.0), _row(2, "Retry-After", 18.0),
                     _row(8, "Retry-After", 19.5), _row(8, "at once", 19.0),
                     _row(16, "at once", 18.0, refused=500)],
        bundled_peak_rss=180 * 2**20,
    )
    verdicts = {t.figure.split(" (")[0].split(":")[0]: t for t in
                targets(report, 2, 8, 120 * 2**20, None)}
    assert verdicts["saturation throughput / in-process pipeline floor"].measured == 19.5 / 20
    assert verdicts["closed-loop cameras, 2..8"].met is True
    storm = verdicts["8 cameras retrying a 503 at once"]
    assert storm.measured == pytest.approx(19.0 / 14.0)
    assert storm.met is True
    closed = report.closed_loop
    closed[1] |= {"switched": True, "peak_rss": 190 * 2**20}  # the layout switch's transient
    closed[2] |= {"peak_rss": 125 * 2**20}
    verdicts = {t.figure: t for t in targets(report, 2, 8, 120 * 2**20, None)}
    rss = verdicts["peak RSS under camera load / bare process running the same model"]
    assert rss.measured == pytest.approx(1.5)  # a settled step's 150 MiB
    assert rss.met is False
    switch = verdicts["same, every step, thread-layout switches included"]
    assert switch.measured == pytest.approx(1.9)
    assert switch.met is None
    assert verdicts["peak RSS, the two bundled models under camera load (MiB)"].met is True
