"""``benchmarks paths``: which paths a node gets, one real (tiny) measurement, the table."""

from __future__ import annotations

from support import TINY_MODEL, require

from benchmarks import paths
from benchmarks.paths import BASELINE, Result, Row, measure_model, path_builders, render
from inference.bundled import BUNDLE_ROOT
from inference.openvino_engine import openvino_available

INFO = {"cpu": "Test CPU", "cores": "2", "onnxruntime": "1.0", "python": "3.11", "host": "h",
        "date": "2026-12-01"}


def test_paths_offered_follow_the_node(monkeypatch, tmp_path):
    require(openvino_available(), "the OpenVINO runtime (pip install '.[openvino]')")
    qdq = tmp_path / "q.onnx"
    # The bf16 probe is monkeypatched: this CPU has bf16; a node without it must not get it.
    monkeypatch.setattr(paths, "cpu_has_bf16", lambda: False)
    builders, notes = path_builders(qdq)
    assert list(builders) == [BASELINE, "openvino-fp32", "ort-int8"]
    assert notes == ["openvino-bf16: this CPU has no bf16 instructions"]
    monkeypatch.setattr(paths, "cpu_has_bf16", lambda: True)
    assert list(path_builders(None)[0]) == [BASELINE, "openvino-fp32", "openvino-bf16"]


def test_one_model_measured_on_every_path(monkeypatch):
    require(openvino_available(), "the OpenVINO runtime (pip install '.[openvino]')")
    monkeypatch.setattr(paths, "cpu_has_bf16", lambda: False)  # two paths: keep it short
    builders, _ = path_builders(None)
    frame = (BUNDLE_ROOT / "defects" / "golden" / "000.jpg").read_bytes()
    rows = measure_model("tiny", TINY_MODEL, frame, builders, threads=1, rounds=2,
                         golden_frames=0)
    assert [r.path for r in rows] == [BASELINE, "openvino-fp32"]
    for r in rows:
        assert r.run_ms is not None
        assert r.run_ms > 0
        assert r.score is None  # no golden set beside this model: agreement only
        assert r.agreement == 1.0  # fp32 on both runtimes: the same detections


def test_the_table_gives_ratios_and_score_deltas_against_ort_fp32():
    result = Result([
        Row("m", BASELINE, 40.0, 0.86, "mAP50 (50 frames)", 1.0),
        Row("m", "openvino-bf16", 20.0, 0.85, "mAP50 (50 frames)", 0.99),
        Row("m", "ort-int8", None, note="cannot load"),
    ], ["a note"])
    text = render(result, INFO, 2, 30)
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| m |")]
    assert cells == [
        ["m", BASELINE, "40.0", "1.00x", "0.8600 mAP50 (50 frames)", "+0.0000", "1.000", ""],
        ["m", "openvino-bf16", "20.0", "2.00x", "0.8500 mAP50 (50 frames)", "-0.0100", "0.990",
         ""],
        ["m", "ort-int8", "—", "—", "—", "—", "—", "cannot load"],
    ]
    assert "- a note" in text
