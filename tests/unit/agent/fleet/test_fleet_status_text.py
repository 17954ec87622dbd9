"""``edge-agent fleet status`` as text: what an operator reads."""

from __future__ import annotations

from agent.fleet.controller import render_status


def test_the_status_text_names_versions_cohorts_and_the_next_decision():
    report = {"defects": {
        "stable": "oci://r/defects:1.1.0", "canary": "oci://r/defects:1.2.0", "percent": 25.0,
        "status": {"phase": "canary", "since": "2026-12-01T10:00:00Z", "reason": "next 25%"},
        "versions": {"1.1.0": ["n2", "n3"], "1.2.0": ["n1"]},
        "canary_nodes": {"nodes": ["n1"], "ready": 1, "score": 0.86, "agreement": 0.97},
        "stable_nodes": {"nodes": ["n2", "n3"], "ready": 2, "score": 0.86, "p99": 0.04},
        "lagging": [], "down": ["n9"],
        "next": {"action": "hold", "reason": "baking at 25%: 60 s of 600 s", "percent": 25.0},
    }}
    assert render_status(report).splitlines() == [
        "defects: canary since 2026-12-01T10:00:00Z (next 25%)",
        "  stable  oci://r/defects:1.1.0",
        "  canary  oci://r/defects:1.2.0 at 25%",
        "  version 1.1.0: 2 node(s): n2, n3",
        "  version 1.2.0: 1 node(s): n1",
        "  canary nodes: 1, 1 ready: score 0.86, agreement 0.97",
        "  stable nodes: 2, 2 ready: score 0.86, p99 0.04",
        "  down    n9",
        "  next    hold: baking at 25%: 60 s of 600 s",
    ]
