"""``benchmarks precision``: ratios against fp32, which path the targets are held against, their
verdicts, and the table's shape. Figures are made up here: no timing is asserted."""

from __future__ import annotations

import argparse

import pytest
from support import COCO_MODEL, IMAGES

from benchmarks import precision
from benchmarks.precision_report import (
    PEER,
    ColdStart,
    PathRow,
    PrecisionResult,
    best_path,
    ratios,
    render_section,
    targets,
)
from benchmarks.report import Report, Target, render

D, F = "defects", "fall (YOLOv8s-size)"


def e2e(ms: float) -> list[float]:
    return [ms / 1000] * 5


def rows() -> list[PathRow]:
    return [
        PathRow(D, "fp32", "fp32", 20.0, e2e(40.0), 50.0, 0.8586, "mAP50 (50 frames)", 1.0),
        PathRow(D, "int8", "int8", 10.0, e2e(25.0), 90.0, 0.8529, "mAP50 (50 frames)", 0.99),
        # the fastest raw run, but 0.03 under fp32: not within max_drop, not the target's path
        PathRow(D, "bf16", "bf16", 8.0, e2e(15.0), 120.0, 0.8286, "mAP50 (50 frames)", 0.95),
        PathRow(D, PEER, e2e=e2e(30.0), note="in-process"),
        PathRow(F, "fp32", "fp32", 100.0, e2e(150.0), 7.0, agreement=1.0),
        # a model configured by path to the QDQ file: the daemon calls its own file fp32
        PathRow(F, "int8", "fp32", 45.0, e2e(70.0), 15.0, agreement=0.97, expect="fp32"),
        # pinned, but the daemon served fp32 (say the runtime failed): never the target's path
        PathRow(F, "bf16", "fp32", 40.0, e2e(140.0), 7.1, agreement=0.99,
                note="pinned bf16, but it failed: fp32 serves"),
    ]


def test_ratios_are_against_the_models_own_fp32():
    r = ratios(rows())
    assert r[(D, "int8")]["run"] == 2.0
    assert r[(D, "int8")]["e2e"] == 40.0 / 25.0
    assert r[(D, "int8")]["fps"] == 90.0 / 50.0
    assert abs(r[(D, "int8")]["drop"] - 0.0057) < 1e-9
    assert r[(F, "int8")]["e2e"] == 150.0 / 70.0
    assert r[(F, "int8")]["drop"] is None  # no golden set: no score to compare
    assert r[(D, PEER)]["e2e"] == 40.0 / 30.0
    assert r[(D, PEER)]["run"] is None
    assert r[(D, PEER)]["fps"] is None


def test_the_targets_path_is_the_fastest_served_within_the_drop():
    assert best_path(rows(), D, golden=True).precision == "int8"  # bf16 is 0.03 under
    assert best_path(rows(), D, golden=False).precision == "bf16"
    assert best_path(rows(), F, golden=False).precision == "int8"  # bf16 served fp32
    only_fp32 = [r for r in rows() if r.precision in ("fp32", PEER)]
    assert best_path(only_fp32, D, golden=True) is None


def test_targets_marked_met_and_missed():
    result = PrecisionResult(rows(), ColdStart([0.8, 1.2, 0.9], "int8", "cached", "why"),
                             golden={D})
    got = {t.figure: t for t in targets(result)}
    e2e_d = got["defects: e2e single-stream p50, fp32 / int8 (x)"]
    assert (e2e_d.measured, e2e_d.met) == (1.6, False)
    sat_d = got["defects: saturation frames/s, int8 / fp32 (x)"]
    assert (sat_d.measured, sat_d.met) == (1.8, False)
    drop = got["defects: golden-set mAP50 drop, int8"]
    assert drop.met is True
    assert drop.target == "<= 0.01"
    e2e_f = got[f"{F}: e2e single-stream p50, fp32 / int8 (x)"]
    assert e2e_f.met is True
    assert e2e_f.measured > 2
    assert got[f"{F}: saturation frames/s, int8 / fp32 (x)"].met is True
    assert got[f"{F}: no golden set, precision auto with runtime.openvino: serves fp32"].met
    cold = next(t for t in got.values() if t.figure.startswith("cold start"))
    assert (cold.measured, cold.met) == (0.9, True)
    assert "0.80, 1.20, 0.90; serves int8, choice cached" in cold.note
    assert not any(f.startswith(f"{F}: golden") for f in got)  # nothing to score it on


def test_a_choice_measured_anew_misses_the_cold_start_target_however_fast():
    result = PrecisionResult(rows(), ColdStart([0.5, 0.5, 0.5], "int8", "now"), golden={D})
    cold = next(t for t in targets(result) if t.figure.startswith("cold start"))
    assert cold.met is False


def test_a_model_without_golden_set_that_left_fp32_is_a_regression():
    changed = [r for r in rows() if r.model == F]
    changed[0].serving = "bf16"
    got = {t.figure: t for t in targets(PrecisionResult(changed))}
    assert got[f"{F}: no golden set, precision auto with runtime.openvino: serves fp32"].met \
        is False


def test_no_lower_precision_served_gives_no_verdict_not_a_pass():
    only = [r for r in rows() if r.model == D and r.precision == "fp32"]
    got = targets(PrecisionResult(only, golden={D}))
    assert [(t.measured, t.met) for t in got] == [(None, None)] * 3
    assert all("no lower-precision path served within the drop" in t.note for t in got)


def test_the_table_has_one_row_per_path_and_every_column():
    text = "\n".join(render_section(PrecisionResult(rows(), ColdStart([0.9], "int8", "cached",
                                                                      "int8: faster"),
                                                    golden={D}, notes=["a note"]), 4, 8.0, 4.0))
    table = [line for line in text.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[1:]]
    assert len(header) == 14
    assert all(len(c) == 14 for c in cells)
    assert [c[:2] for c in cells] == [[r.model, r.precision] for r in rows()]
    by = {(c[0], c[1]): dict(zip(header, c, strict=True)) for c in cells}
    int8 = by[(D, "int8")]
    assert (int8["raw run ms"], int8["e2e p50 ms"], int8["saturation frames/s"]) == \
        ("10.0", "25.0", "90.0")
    row = next(c for c in cells if c[:2] == [D, "int8"])
    assert [row[4], row[6], row[9]] == ["2.00x", "1.60x", "1.80x"]  # each beside its figure
    assert (int8["golden score"], int8["Δ score"]) == ("0.8529", "-0.0057")
    assert by[(D, "fp32")]["Δ score"] == "+0.0000"
    peer = by[(D, PEER)]
    assert (peer["raw run ms"], peer["e2e p50 ms"], peer["saturation frames/s"]) == \
        ("—", "30.0", "—")
    assert by[(F, "bf16")]["daemon serves"] == "fp32"
    assert by[(F, "int8")]["golden score"] == "—"
    assert "4 closed-loop cameras for 8 s after 4 s settling" in text
    assert "defects (auto, runtime.openvino, all paths measured at the first start): int8" in text
    assert "- a note" in text


def test_benchmarks_run_report_carries_the_section_and_its_targets():
    report = Report(
        {"cpu": "Test CPU", "cores": "2", "onnxruntime": "1.0", "python": "3.11", "host": "h",
         "date": "2026-12-01"},
        single={"raw": [0.05], "daemon": [0.05], "peer": []},
        targets=[Target("ratio", 1.0, "<= 1.08", True)],
    )
    result = PrecisionResult(rows(), golden={D})
    report.precision = render_section(result, 4, 8.0, 4.0)
    report.targets += targets(result)
    text = render(report, COCO_MODEL, IMAGES / "astronaut-1080p.jpg", 4)
    assert "| defects | int8 | int8 | 10.0 | 2.00x |" in text
    assert "| defects: golden-set mAP50 drop, int8 | 0.01 | <= 0.01 | yes |  |" in text


def test_cli_defaults_both_models_and_two_cameras_a_core():
    ap = argparse.ArgumentParser()
    precision.add_arguments(ap)
    args = ap.parse_args([])
    assert args.models == ["defects", "fall"]
    assert ap.parse_args(["--models", "defects"]).models == ["defects"]
    with pytest.raises(argparse.ArgumentTypeError, match="expected some of defects,fall"):
        precision.parse_models("defects,yolo")
    assert precision.cameras_for(args.cameras, 2) == 4
    assert precision.cameras_for(3, 2) == 3
