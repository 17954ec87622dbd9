"""The Grafana fleet dashboard: valid, on the ${datasource} variable, and reading only metrics
that the daemon's /metrics/summary (what the fleet Prometheus scrapes) really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from k3s_promql import (
    DASHBOARD,
    LATER,
    PROMETHEUS_SERIES,
    UnknownFunction,
    exported_names,
    metric_names,
    variable_query_metrics,
)
from support import require

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# What the dashboard must show, by the metric each view reads.
REQUIRED_METRICS = {
    "edge_inference_latency_seconds",  # p99 per node
    "edge_queue_depth_max",  # queue depth per node
    "edge_inference_latency_seconds_count",  # fps per node and model (the window count / 60)
    "edge_model_validation_score",  # accuracy per model and version
    "up",  # offline nodes
    "edge_ready",  # nodes not ready
    "edge_model_info",  # model versions in the fleet
    "edge_accelerator_utilization_ratio",  # GPU utilization
    "edge_model_canary",  # rollout: canary against stable, per model
    "edge_model_shadow_agreement",  # rollout: agreement
    "edge_requests_total",  # rollout: errors
}


def test_the_rollout_panels_key_on_edge_model_canary(dashboard: dict[str, Any]) -> None:
    """Canary or stable is what each node reports, never a hand-applied target label."""
    rollout = [(title, expr) for title, expr in exprs(dashboard) if "rollout" in expr]
    titles = {title for title, _ in rollout}
    assert {"Rollout: nodes per version", "Rollout: validation score, canary vs stable",
            "Rollout: shadow agreement, canary vs stable", "Rollout: p99 latency, canary vs stable",
            "Rollout: errors, canary vs stable", "Model versions in the fleet"} <= titles, titles
    for title, expr in rollout:
        assert "edge_model_canary" in expr, title
        assert not re.search(r"rollout\s*(=|!=|=~|!~)\s*\"", expr), title


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def scraped() -> frozenset[str]:
    """The names the fleet can query: /metrics/summary's samples, and Prometheus' own ``up``."""
    summary, _ = exported_names()
    return summary | PROMETHEUS_SERIES


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # a collapsed row holds its panels


def exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query target."""
    return [
        (panel["title"], target["expr"])
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]
            out.append((var["name"], query["query"] if isinstance(query, dict) else query))
    return out


# --- the tokenizer the name checks rely on -------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('edge_ready{job="edge-agent", node=~"$node"} == 0', {"edge_ready"}),
        (
            'sum by (model, reason) (rate(edge_requests_rejected_total{code="503"}[5m]))',
            {"edge_requests_rejected_total"},
        ),
        (
            "sum(rate(edge_requests_total[$__rate_interval])) without (code, instance)",
            {"edge_requests_total"},
        ),
        ('count(up{job="edge-agent"} == 0) or vector(0)', {"up"}),
        (
            "a_total / on (model) group_left (version) b:c:d offset 1d > bool 1e3",
            {"a_total", "b:c:d"},
        ),
        (
            'label_replace(x, "dst", "$1", "src", "(.*)") and ignoring(rollout) y @ start()',
            {"x", "y"},
        ),
        ('quantile(0.99, m{quantile="0.99"}[1h:5m]) > Inf', {"m"}),
        ('{__name__="edge_ready", node="${node}"}', {"edge_ready"}),
        ("log10(x2) - -0.5 * 1.5e-3 + 0x1f", {"x2"}),
    ],
)
def test_tokenizer_reads_only_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_tokenizer_catches_a_misspelled_metric(scraped: frozenset[str]) -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m]))) + "
        'edge_inferance_latency_seconds{quantile="0.99", model=~"$model"}'
    )
    unknown = metric_names(expr) - scraped
    assert unknown == {"x_bucket", "edge_inferance_latency_seconds"}


def test_tokenizer_refuses_an_unknown_function() -> None:
    with pytest.raises(UnknownFunction, match="ratee"):
        metric_names("ratee(edge_requests_total[5m])")


def test_variable_queries_read_the_selector_not_the_label() -> None:
    assert variable_query_metrics('label_values(up{job="edge-agent"}, line)') == {"up"}
    assert variable_query_metrics("label_values(line)") == set()
    assert variable_query_metrics("query_result(max by (node) (edge_ready))") == {"edge_ready"}


# --- the dashboard -------------------------------------------------------------------------


def test_dashboard_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "edge-fleet"
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["panels"]
    ids = [panel.get("id") for panel in all_panels(dashboard["panels"])]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in all_panels(dashboard["panels"]):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_panel_and_query_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_template_variables(dashboard: dict[str, Any]) -> None:
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert set(variables) >= {"datasource", "line", "node", "model"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("line", "node", "model"):
        var = variables[name]
        assert var["type"] == "query", name
        assert var["datasource"] == DATASOURCE, name
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert re.fullmatch(rf"label_values\(.+,\s*{name}\)", query), query


def test_dashboard_reads_only_what_the_fleet_scrapes(
    dashboard: dict[str, Any], scraped: frozenset[str]
) -> None:
    _, full = exported_names()
    reads = [(title, metric_names(expr)) for title, expr in exprs(dashboard)]
    reads += [(f"${name}", variable_query_metrics(q)) for name, q in variable_queries(dashboard)]
    used: dict[str, set[str]] = {}
    for where, names in reads:
        for name in names:
            used.setdefault(name, set()).add(where)
    missing = {}
    for name, where in sorted(used.items()):
        if name in scraped:
            continue
        if name in LATER:
            why = "not exported yet (model lifecycle)"
        elif name in full:
            why = "only in the full /metrics, which the fleet does not scrape"
        else:
            why = "not exported at all"
        missing[name] = f"{why}; used in {sorted(where)}"
    assert not missing, missing
    assert set(used) >= REQUIRED_METRICS, REQUIRED_METRICS - set(used)


def test_summary_names_are_also_in_the_full_text() -> None:
    summary, full = exported_names()
    assert "edge_inference_latency_seconds" in summary
    assert "edge_accelerator_utilization_ratio" in summary
    assert summary <= full, summary - full


def test_dashboard_queries_parse_as_promql(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses each query (as a recording rule), with Grafana's variables filled in."""
    tool = shutil.which("promtool")
    require(tool is not None, "promtool (apt-get install prometheus)")
    assert tool is not None
    grafana = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "6h"}
    rules = []
    for i, (_, expr) in enumerate(exprs(dashboard)):
        for variable, value in grafana.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
