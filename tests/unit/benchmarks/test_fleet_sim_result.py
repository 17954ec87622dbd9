"""The fleet simulation's reading of what it saw: the controller's steps per release, the most
nodes on a version at once, when a cut-off node caught up, and the report with its timeline."""

from __future__ import annotations

from pathlib import Path

from benchmarks.fleet_sim import SimResult
from benchmarks.fleet_sim_report import write_report


def result() -> SimResult:
    nodes = ["a", "b", "c"]
    return SimResult(
        nodes=nodes, cohorts={5: ["a"], 25: ["a", "b"]}, cameras_on=["a", "b"],
        stopped_node="b", uplink_node="c", released={"1.1.0": 1.0, "1.2.0": 50.0},
        events=[(3.0, "b: process stopped (SIGSTOP)")],
        decisions=[
            (2.0, 1, "fusion: step -> 5%: starts"), (4.0, 1, "fusion: hold: baking at 5%"),
            (22.0, 1, "fusion: step -> 25%: healthy"), (30.0, 2, "fusion: hold: baking at 25%"),
            (42.0, 2, "fusion: step -> 100%: healthy"), (48.0, 2, "fusion: promote: healthy"),
            (49.0, 2, "fusion: hold: no canary in the manifest"),
            (51.0, 2, "fusion: step -> 5%: starts"), (71.0, 2, "fusion: rollback: a refused"),
        ],
        changes=[(0.1, n, "1.0.0", "stable") for n in nodes] + [
            (2.5, "a", "1.1.0", "canary"), (27.0, "b", "1.1.0", "canary"),
            (43.0, "c", "1.1.0", "canary"), (52.0, "a", "1.2.0", "canary"),
            (60.0, "a", "1.1.0", "stable")],
        camera_answers={"a": {"200": 10}, "b": {"200": 8, "503": 1}},
        skipped_while_stopped=4, answered_while_stopped=False, health_checks=100,
        health_bad=[], restart={}, returned={"b": 26.0, "c": 45.0}, connected_while_cut=0.0,
        final_versions=dict.fromkeys(nodes, "1.1.0"), end_s=75.0)


def test_steps_and_outcome_per_release() -> None:
    r = result()
    assert r.steps("1.1.0") == [5, 25, 100]
    assert r.outcome("1.1.0") == "promote"
    assert r.steps("1.2.0") == [5]
    assert r.outcome("1.2.0") == "rollback"


def test_most_nodes_on_a_version_and_failed_requests() -> None:
    r = result()
    assert r.most_nodes_on("1.1.0") == 3
    assert r.most_nodes_on("1.2.0") == 1
    assert r.failed_requests() == 1


def test_caught_up_counts_from_the_return() -> None:
    r = result()
    assert r.caught_up("b", "1.1.0") == 1.0
    assert r.caught_up("c", "1.1.0") is None  # on 1.1.0 before it "returned": not a catch-up
    assert r.caught_up("a", "1.1.0") is None  # never cut off


def test_the_report_has_every_node_and_the_buckets(tmp_path: Path) -> None:
    report, _ = write_report(result(), "models: {}\n", "fusion: stable\n", [], tmp_path)
    text = report.read_text()
    assert "| b | 0 s 1.0.0 (stable) -> 27 s 1.1.0 (canary) |" in text
    assert "| 0 | 3 | 0 | 0 |" in text  # from the first poll of every node
    assert "| 60 | 0 | 3 | 0 |" in text
    assert "**b: process stopped (SIGSTOP)**" in text
