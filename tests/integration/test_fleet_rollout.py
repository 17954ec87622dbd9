"""The rollout controller end to end: four real agents (their own node names and state dirs)
following a file manifest, a real Prometheus scraping their /metrics/summary, and
``edge-agent fleet`` (the command line, as an operator or a CI job runs it) reading Prometheus
and writing the manifest the agents poll. A good version goes 50% -> 100% -> stable; a broken
one, refused by the agents' own gate, is rolled back and not proposed again; a second pass on
the same data writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lifecycle_helpers import FUSION, fusion_model, publish
from support import Daemon, require, start_prometheus, stop_process

from agent.models.manifest import in_canary

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

# Two nodes in the 50% cohort of "fusion" and two outside, by the nodes' own hash.
NAMES = [f"press-{i:02d}" for i in range(20)]
INSIDE = [n for n in NAMES if in_canary(n, "fusion", 50)][:2]
OUTSIDE = [n for n in NAMES if not in_canary(n, "fusion", 50)][:2]
NODES = INSIDE + OUTSIDE
RULES = Path(__file__).resolve().parents[2] / "k3s" / "prometheus" / "rules.yml"
ROLLOUT = {"steps": [50, 100], "bake_s": 6, "min_nodes": 2, "max_error_ratio": 2,
           "max_p99_ratio": 20}


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[dict[str, Daemon]]:
    manifest = tmp_path / "fleet.yaml"
    bundled = (FUSION.folder / "model.json").as_uri()
    write(manifest, {"models": {"fusion": {"stable": {"source": bundled}, "min_score": 0.9,
                                           "max_drop": 0.02, "rollout": ROLLOUT}}})
    started: dict[str, Daemon] = {}
    try:
        for node in NODES:
            config = tmp_path / f"{node}.yaml"
            config.write_text(yaml.safe_dump({
                "models": [{"name": "fusion", "bundled": "fusion"}],
                "runtime": {"intra_op_threads": 1},
                "lifecycle": {"manifest": str(manifest), "node_name": node,
                              "poll_interval_s": 1, "watch_interval_s": 0.3,
                              "retry_attempts": 2, "retry_max_s": 0.2},
            }))
            started[node] = Daemon(["--config", str(config), "--state-dir",
                                    str(tmp_path / node / "state")])
        for d in started.values():
            asyncio.run(d.wait_ready(120))
        yield started
    finally:
        for d in started.values():
            d.stop()


@pytest.fixture
def prometheus(tmp_path: Path, agents: dict[str, Daemon]) -> Iterator[str]:
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus (apt-get install prometheus)")
    assert binary is not None
    targets = [{"targets": [f"127.0.0.1:{d.port}"], "labels": {"node": node}}
               for node, d in agents.items()]
    config = tmp_path / "prometheus.yml"
    shutil.copy(RULES, tmp_path / "rules.yml")  # the fleet's own rules, evaluated every second
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "scrape_configs": [{"job_name": "edge-agent", "metrics_path": "/metrics/summary",
                            "static_configs": targets}]}))
    proc, url = start_prometheus(binary, config, tmp_path / "tsdb")
    try:
        yield url
    finally:
        stop_process(proc, 10)


def write(path: Path, doc: dict) -> None:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "fleet", *args], capture_output=True,
                          text=True, timeout=120)


def query(prom: str, promql: str) -> list[dict]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())["data"]["result"]


def recorded_cohorts(prom: str, start: float, end: float) -> set[tuple[str, str, float]]:
    """Each (rollout, version, count) the recording rule held at any second in the span."""
    url = f"{prom}/api/v1/query_range?" + urllib.parse.urlencode({
        "query": 'model_rollout_version:edge_model_info:count{model="fusion"}',
        "start": start, "end": end, "step": 1})
    with urllib.request.urlopen(url, timeout=30) as resp:
        series = json.loads(resp.read())["data"]["result"]
    return {(s["metric"]["rollout"], s["metric"]["version"], float(v))
            for s in series for _, v in s["values"]}


def serving(agents: dict[str, Daemon]) -> dict[str, str]:
    out = {}
    for node, d in agents.items():
        with urllib.request.urlopen(d.url + "/v1/models", timeout=10) as resp:
            (model,) = [m for m in json.loads(resp.read())["models"] if m["name"] == "fusion"]
        out[node] = model["version"]
    return out


class Cameras(threading.Thread):
    """A few requests a second to every agent, so rates, errors and p99 have data."""

    def __init__(self, agents: dict[str, Daemon]) -> None:
        super().__init__(daemon=True)
        self.urls = [d.url + "/v2/models/fusion/infer" for d in agents.values()]
        self.body = (FUSION.folder / "sample-request.json").read_bytes()
        self.stop = threading.Event()
        self.statuses: list[int] = []

    def run(self) -> None:
        while not self.stop.wait(0.1):
            for url in self.urls:
                req = urllib.request.Request(url, data=self.body, method="POST",
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as resp:
                    resp.read()
                    self.statuses.append(resp.status)


def drive(prom: str, manifest: Path, until, limit_s: float = 120) -> list[str]:
    """``fleet step`` once a second until ``until(manifest doc)``; the lines it printed."""
    lines: list[str] = []
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        done = fleet("step", "--prometheus", prom, "--manifest", str(manifest),
                     "--min-window", "5")
        assert done.returncode == 0, done.stderr
        lines.extend(done.stdout.splitlines())
        if until(yaml.safe_load(manifest.read_text())):
            return lines
        time.sleep(1)
    raise AssertionError(f"not reached in {limit_s} s: {lines[-5:]}\n{manifest.read_text()}")


def test_a_good_version_is_stepped_and_promoted_and_a_broken_one_rolled_back(
        tmp_path: Path, agents: dict[str, Daemon], prometheus: str):
    manifest = tmp_path / "fleet.yaml"
    share = tmp_path / "share"
    v2 = publish(share / "1.0.1", fusion_model("1.0.1"), "1.0.1")
    v3 = publish(share / "broken", fusion_model("9.9.9", broken=True), "9.9.9")
    cameras = Cameras(agents)
    cameras.start()
    try:
        end = time.monotonic() + 60
        while True:
            try:
                if len(query(prometheus, 'edge_model_canary{model="fusion"}')) == len(NODES):
                    break
            except urllib.error.URLError:
                pass  # Prometheus still starting
            assert time.monotonic() < end, "Prometheus never saw the four agents"
            time.sleep(0.5)

        # A release pipeline names the canary; the controller takes it from there.
        doc = yaml.safe_load(manifest.read_text())
        doc["models"]["fusion"]["canary"] = {"source": v2, "percent": 50}
        write(manifest, doc)
        started = time.time()
        cohorts: set[tuple[str, str, float]] = set()

        def promoted(doc: dict) -> bool:
            # The recording rules see the same cohorts (from edge_model_canary) on the way.
            for s in query(prometheus, 'model_rollout_version:edge_model_info:count'
                                       '{model="fusion"}'):
                cohorts.add((s["metric"]["rollout"], s["metric"]["version"],
                             float(s["value"][1])))
            return doc.get("status", {}).get("fusion", {}).get("phase") == "stable"

        lines = drive(prometheus, manifest, promoted)
        # And every evaluation since, not only those the loop above happened to sample.
        cohorts |= recorded_cohorts(prometheus, started, time.time())
        actions = [line.split(":")[1].strip() for line in lines]
        assert actions[0] == "step -> 50%", lines
        assert "step -> 100%" in actions, lines
        assert actions[-1] == "promote", lines
        assert "rollback" not in actions, lines
        assert ("canary", "1.0.1", 2.0) in cohorts, cohorts  # the 50% step
        assert ("stable", "1.0.0", 2.0) in cohorts, cohorts
        assert ("canary", "1.0.1", 4.0) in cohorts, cohorts  # the 100% step
        final = yaml.safe_load(manifest.read_text())
        assert final["models"]["fusion"]["stable"] == {"source": v2}
        assert "canary" not in final["models"]["fusion"]
        assert final["models"]["fusion"]["rollout"] == ROLLOUT
        end = time.monotonic() + 30
        while set(serving(agents).values()) != {"1.0.1"}:
            assert time.monotonic() < end, serving(agents)
            time.sleep(0.5)

        # Idempotent: a second and third pass on the same data write nothing.
        before = manifest.stat()
        for _ in range(2):
            done = fleet("step", "--prometheus", prometheus, "--manifest", str(manifest))
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == "fusion: hold: no canary in the manifest"
        assert (manifest.stat().st_ino, manifest.stat().st_mtime_ns) == \
            (before.st_ino, before.st_mtime_ns)

        # The broken version: the agents of the cohort refuse it at their gate (min_score);
        # once the step has baked, the controller sees them synced but not on it.
        doc = yaml.safe_load(manifest.read_text())
        doc["models"]["fusion"]["canary"] = {"source": v3, "percent": 50}
        write(manifest, doc)
        lines = drive(prometheus, manifest,
                      lambda d: d["status"]["fusion"]["phase"] == "rolled_back")
        assert lines[-1].startswith("fusion: rollback: "), lines
        for node in INSIDE:
            assert f"{node} is in the 50% cohort but serves 1.0.1" in lines[-1], lines[-1]
        final = yaml.safe_load(manifest.read_text())
        assert "canary" not in final["models"]["fusion"]
        assert final["models"]["fusion"]["stable"] == {"source": v2}
        (rejected,) = final["status"]["fusion"]["rejected"]
        assert rejected["source"] == v3
        assert set(serving(agents).values()) == {"1.0.1"}

        # Named again by mistake: taken out again at once, without a new step.
        doc = yaml.safe_load(manifest.read_text())
        doc["models"]["fusion"]["canary"] = {"source": v3, "percent": 50}
        write(manifest, doc)
        done = fleet("step", "--prometheus", prometheus, "--manifest", str(manifest))
        assert done.returncode == 0, done.stderr
        assert "was rolled back before" in done.stdout, done.stdout
        assert "canary" not in yaml.safe_load(manifest.read_text())["models"]["fusion"]

        status = fleet("status", "--prometheus", prometheus, "--manifest", str(manifest),
                       "--json")
        assert status.returncode == 0, status.stderr
        report = json.loads(status.stdout)["fusion"]
        assert report["versions"] == {"1.0.1": sorted(NODES)}
        assert report["status"]["phase"] == "rolled_back"
        nodes = query(prometheus, 'model_rollout_version:edge_model_info:count{model="fusion"}')
        assert [(s["metric"]["rollout"], s["metric"]["version"], s["value"][1])
                for s in nodes] == [("stable", "1.0.1", "4")]
    finally:
        cameras.stop.set()
        cameras.join(30)
    assert cameras.statuses
    assert set(cameras.statuses) == {200}
