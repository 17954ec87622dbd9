"""The benchmark report: every target gets a row with its verdict, the sweep its table."""

from __future__ import annotations

from support import COCO_MODEL, IMAGES

from benchmarks.report import Report, Target, render


def test_render_lists_targets_with_verdicts_and_the_sweeps():
    report = Report(
        {"cpu": "Test CPU", "cores": "2", "onnxruntime": "1.0", "python": "3.11", "host": "h",
         "date": "2026-11-27"},
        single={"raw": [0.050, 0.052], "daemon": [0.055, 0.056], "peer": []},
        raw_throughput={"1 session x 2 threads": 20.0},
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
