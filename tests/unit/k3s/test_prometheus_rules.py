"""The fleet Prometheus files: configs and rules promtool-clean, every alert unit-tested both
ways, and every metric the rules read one the daemon exports (or will, or a recording rule)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from k3s_promql import LATER, PROMETHEUS_DIR, PROMETHEUS_SERIES, exported_names, metric_names
from support import require

SCRAPE_CONFIG = PROMETHEUS_DIR / "scrape-config.yml"
SCRAPE_STATIC = PROMETHEUS_DIR / "scrape-static.yml"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules.test.yml"
README = PROMETHEUS_DIR / "README.md"

ALERTS = {
    "EdgeLatencyP99High",
    "EdgeQueueSaturated",
    "EdgeNodeNotReady",
    "EdgeNodeDown",
    "EdgeControlPlaneUnreachable",
    "EdgeModelValidationDrop",
    "EdgeCanaryWorseThanStable",
}
SEVERITIES = {"critical", "warning", "info"}
K8S_SD_PROBE = """\
scrape_configs:
  - job_name: probe
    kubernetes_sd_configs:
      - role: pod
"""


@pytest.fixture(scope="module")
def promtool() -> str:
    tool = shutil.which("promtool")
    require(tool is not None, "promtool (apt-get install prometheus)")
    assert tool is not None
    return tool


def run(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=120, cwd=cwd or PROMETHEUS_DIR
    )


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    """Exit 0, and nothing promtool flags: no warning, no duplicate rule, nothing on stderr
    beyond its progress lines."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "warning" not in output.lower(), output
    assert "duplicate" not in output.lower(), output
    assert "FAILED" not in output, output


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"]]


def alert_rules() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def edge_job(config: dict[str, Any]) -> dict[str, Any]:
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "edge-agent"]
    return job


# --- scrape configs ------------------------------------------------------------------------


def promtool_has_kubernetes_sd(tool: str, tmp_path: Path) -> bool:
    """Debian's prometheus package (what apt installs) is built without Kubernetes SD."""
    probe = tmp_path / "k8s-probe.yml"
    probe.write_text(K8S_SD_PROBE)
    return run(tool, "check", "config", str(probe), cwd=tmp_path).returncode == 0


def test_scrape_config_with_promtool(promtool: str, tmp_path: Path) -> None:
    if not promtool_has_kubernetes_sd(promtool, tmp_path):
        pytest.skip("this promtool is built without Kubernetes SD (Debian): see the next test")
    result = run(promtool, "check", "config", str(SCRAPE_CONFIG))
    assert_clean(result)
    assert "SUCCESS: 1 rule files found" in result.stdout


def test_scrape_config_with_promtool_kubernetes_sd_as_static(promtool: str, tmp_path: Path) -> None:
    """Everything but the kubernetes_sd_configs block, through promtool on any build: the same
    file with that block replaced by a static target, next to a copy of the rules."""
    config = load(SCRAPE_CONFIG)
    job = edge_job(config)
    del job["kubernetes_sd_configs"]
    job["static_configs"] = [{"targets": ["127.0.0.1:8080"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for rule_file in config["rule_files"]:
        shutil.copy(PROMETHEUS_DIR / rule_file, tmp_path / rule_file)
    result = run(promtool, "check", "config", "prometheus.yml", cwd=tmp_path)
    assert_clean(result)
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_scrape_config_discovers_the_edge_agent_pods() -> None:
    config = load(SCRAPE_CONFIG)
    job = edge_job(config)
    assert job["scrape_interval"] == "60s"
    assert job["metrics_path"] == "/metrics/summary"
    (sd,) = job["kubernetes_sd_configs"]
    assert sd["role"] == "pod"
    assert sd["namespaces"]["names"] == ["edge-agent"]
    assert sd["attach_metadata"] == {"node": True}  # node labels: line
    assert set(sd) <= {"role", "namespaces", "selectors", "attach_metadata"}, set(sd)
    relabel = job["relabel_configs"]
    keeps = {(tuple(r["source_labels"]), r["regex"]) for r in relabel if r.get("action") == "keep"}
    assert keeps == {
        (("__meta_kubernetes_pod_label_app_kubernetes_io_name",), "edge-agent"),
        (("__meta_kubernetes_pod_container_port_number",), "8080"),
    }
    sources: dict[str, set[str]] = {}
    for r in relabel:
        if r.get("action", "replace") == "replace":
            sources.setdefault(r["target_label"], set()).update(r.get("source_labels", []))
    assert sources["node"] == {"__meta_kubernetes_pod_node_name"}
    assert sources["line"] == {"__meta_kubernetes_node_label_edge_example_com_line"}
    # Canary or stable is each node's own report (edge_model_canary), not a hand label.
    assert "rollout" not in sources
    assert "__address__" in sources


@pytest.mark.parametrize("path", [SCRAPE_CONFIG, SCRAPE_STATIC], ids=lambda p: p.name)
def test_rule_files_are_relative_to_the_config(path: Path) -> None:
    config = load(path)
    assert config["rule_files"] == ["rules.yml"]
    for rule_file in config["rule_files"]:
        assert (path.parent / rule_file).is_file(), rule_file


def test_static_scrape_config_with_promtool(promtool: str) -> None:
    result = run(promtool, "check", "config", str(SCRAPE_STATIC))
    assert_clean(result)
    job = edge_job(load(SCRAPE_STATIC))
    assert job["metrics_path"] == "/metrics/summary"
    for group in job["static_configs"]:
        assert set(group["labels"]) == {"node", "line"}, group


# --- rules ---------------------------------------------------------------------------------


def test_rules_with_promtool(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES))
    assert_clean(result)
    assert f"SUCCESS: {len(rules())} rules found" in result.stdout


def test_rule_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rule_unit_tests_catch_a_changed_threshold(promtool: str, tmp_path: Path) -> None:
    """The tests pin the thresholds: a p99 SLO of 0.35 s instead of 0.25 s fails them."""
    text = RULES.read_text()
    changed = text.replace('quantile="0.99"} > 0.25', 'quantile="0.99"} > 0.35')
    assert changed != text
    (tmp_path / "rules.yml").write_text(changed)
    shutil.copy(RULES_TEST, tmp_path / "rules.test.yml")
    result = run(promtool, "test", "rules", "rules.test.yml", cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "EdgeLatencyP99High" in result.stdout + result.stderr


def test_every_alert_has_for_severity_and_annotations() -> None:
    alerts = alert_rules()
    assert set(alerts) >= ALERTS, ALERTS - set(alerts)
    for name, rule in alerts.items():
        assert re.fullmatch(r"\d+[smhd]", rule.get("for", "")), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name


def test_alert_durations() -> None:
    alerts = alert_rules()
    expected = {
        "EdgeLatencyP99High": "5m",
        "EdgeQueueSaturated": "5m",
        "EdgeNodeNotReady": "5m",
        "EdgeNodeDown": "5m",
        "EdgeControlPlaneUnreachable": "30m",
        "EdgeCanaryWorseThanStable": "15m",
    }
    assert {name: alerts[name]["for"] for name in expected} == expected


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    fires: set[str] = set()
    silent: set[str] = set()
    for case in load(RULES_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = set(alert_rules())
    assert alerts - fires == set(), "no firing case"
    assert alerts - silent == set(), "no silent case"
    for case in load(RULES_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            for alert in check.get("exp_alerts") or []:
                assert alert["exp_annotations"], check["alertname"]
                assert alert["exp_labels"]["severity"], check["alertname"]


def test_rule_unit_tests_evaluate_recording_rules_first() -> None:
    """Without group_eval_order promtool orders the groups at random, and an alert reading a
    recording rule starts its `for` a step late in some runs (a flaky test)."""
    groups = [group["name"] for group in load(RULES)["groups"]]
    assert load(RULES_TEST)["group_eval_order"] == groups
    assert groups[0].endswith(".recording")


def test_every_recording_rule_is_unit_tested() -> None:
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    tested = {
        name
        for case in load(RULES_TEST)["tests"]
        for check in case.get("promql_expr_test", [])
        for name in metric_names(check["expr"])
    }
    assert recorded - tested == set()


def test_rules_read_only_exported_later_or_recorded_metrics() -> None:
    summary, _ = exported_names()
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    known = summary | LATER | PROMETHEUS_SERIES | recorded
    unknown = {}
    for rule in rules():
        names = metric_names(rule["expr"])
        if names - known:
            unknown[rule.get("alert") or rule["record"]] = sorted(names - known)
    assert not unknown, unknown
    edge_in_text = set(re.findall(r"\bedge_[a-z0-9_]+", RULES.read_text()))
    assert edge_in_text <= known | {n.split(":")[1] for n in recorded}, edge_in_text - known


def test_readme_lists_every_alert() -> None:
    text = README.read_text()
    for name in alert_rules():
        assert f"`{name}`" in text, name


def test_canary_and_stable_come_from_edge_model_canary() -> None:
    """Every rule grouping by cohort reads it from the nodes' own edge_model_canary (through
    instance_model:edge_model_rollout:info), never from a target label."""
    recorded = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    assert metric_names(recorded["instance_model:edge_model_rollout:info"]) == {
        "edge_model_canary", "edge_model_info"}
    for name, expr in recorded.items():
        if "rollout" in name and name != "instance_model:edge_model_rollout:info":
            reads = metric_names(expr)
            assert reads & {"instance_model:edge_model_rollout:info",
                            "model_rollout_version:edge_model_info:count"}, name
    alert = alert_rules()["EdgeCanaryWorseThanStable"]["expr"]
    assert metric_names(alert) <= set(recorded), alert
