"""``python -m benchmarks fleet-sim``: a simulated fleet on loopback, rolled out by the real
controller.

N agents (``edge-agent serve``, each with its own node name and state dir) follow one file
manifest; a real Prometheus scrapes their ``/metrics/summary`` through file service discovery
(with the fleet's rules); a real OCI registry (Debian's docker-registry) holds three versions
of the fusion model pushed with ORAS: 1.0.0 (the bundled bytes), 1.1.0 (good) and 1.2.0
(broken: confident and wrong); cameras post to several nodes; ``edge-agent fleet run`` steps
the manifest. 1.1.0 goes through the steps to every node and is promoted; 1.2.0 is refused by
the nodes of its first cohort and rolled back. Writes a report with the controller's
decisions and the timeline of versions per node (``benchmarks/results/``).

Needs ``.[cpu,test]`` (onnx, oras), ``prometheus`` and ``docker-registry`` (apt).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import yaml

from agent.models.manifest import in_canary
from benchmarks.common import RESULTS, machine
from inference.bundled import BUNDLE_ROOT

ROOT = Path(__file__).resolve().parent.parent
MODEL = "fusion"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(url: str, limit_s: float, what: str) -> None:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer at {url} in {limit_s:g} s")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def versions_to_publish(folder: Path) -> dict[str, Path]:
    """1.0.0 (the bundled bytes), 1.1.0 (same weights, its own digest), 1.2.0 (broken)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    bundled = BUNDLE_ROOT / MODEL / "model.onnx"
    out = {}
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        model = onnx.load(str(bundled))
        if version != "1.0.0":
            for prop in model.metadata_props:
                if prop.key == "version":
                    prop.value = version
        if version == "1.2.0":  # the output layer's classes rotated: confident and wrong
            (last,) = [init for init in model.graph.initializer if init.name == "w2"]
            rotated = np.roll(numpy_helper.to_array(last), 1, axis=1)
            last.CopyFrom(numpy_helper.from_array(rotated.astype(np.float32), last.name))
        data = bundled.read_bytes() if version == "1.0.0" else model.SerializeToString()
        target = folder / version
        target.mkdir(parents=True)
        (target / "model.onnx").write_bytes(data)
        (target / "model.json").write_text(json.dumps({
            "name": MODEL, "version": version, "kind": "tensor", "file": "model.onnx",
            "sha256": hashlib.sha256(data).hexdigest()}))
        out[version] = target
    return out


@dataclass
class Fleet:
    workdir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Any] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        self.logs.append(log)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.close()


@contextlib.contextmanager
def fleet_up(workdir: Path, nodes: list[str]) -> Iterator[tuple[Fleet, str, str, Path]]:
    """Registry, agents and Prometheus up; yields (fleet, registry host, prometheus url,
    manifest path)."""
    fleet = Fleet(workdir)
    try:
        registry = shutil.which("docker-registry")
        prometheus = shutil.which("prometheus")
        if registry is None or prometheus is None:
            raise RuntimeError("needs docker-registry and prometheus (apt-get install "
                               "docker-registry prometheus)")
        host = f"127.0.0.1:{free_port()}"
        (workdir / "registry.yml").write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {workdir / 'registry'}}}}}\n"
            f"http: {{addr: '{host}'}}\n")
        fleet.spawn("registry", [registry, "serve", str(workdir / "registry.yml")])
        wait_http(f"http://{host}/v2/", 20, "the registry")

        manifest = workdir / "fleet.yaml"
        manifest.write_text(yaml.safe_dump(initial_manifest(f"oci://{host}/models/fusion:1.0.0"),
                                           sort_keys=False))
        for node in nodes:
            port = free_port()
            fleet.ports[node] = port
            config = workdir / "nodes" / node / "config.yaml"
            config.parent.mkdir(parents=True)
            config.write_text(yaml.safe_dump({
                "host": "127.0.0.1", "port": port, "state_dir": str(config.parent / "state"),
                "log_format": "json",
                "models": [{"name": MODEL, "bundled": MODEL}],
                "runtime": {"intra_op_threads": 1},
                "lifecycle": {"manifest": str(manifest), "node_name": node,
                              "poll_interval_s": 5, "watch_interval_s": 1,
                              "insecure_registries": [host]},
            }))
            fleet.spawn(f"agent-{node}", [sys.executable, "-m", "agent", "serve", "--config",
                                          str(config)], env={"PYTHONPATH": str(ROOT)})
        targets = [{"targets": [f"127.0.0.1:{fleet.ports[n]}"], "labels": {"node": n}}
                   for n in nodes]
        (workdir / "targets.json").write_text(json.dumps(targets))
        shutil.copy(ROOT / "k3s" / "prometheus" / "rules.yml", workdir / "rules.yml")
        (workdir / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": ["rules.yml"],
            "scrape_configs": [{"job_name": "edge-agent", "metrics_path": "/metrics/summary",
                                "file_sd_configs": [{"files": [str(workdir / "targets.json")]}],
                                "relabel_configs": [{"source_labels": ["node"],
                                                     "target_label": "instance"}]}]}))
        prom = f"http://127.0.0.1:{free_port()}"
        fleet.spawn("prometheus", [prometheus, f"--config.file={workdir / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={workdir / 'tsdb'}",
                                   f"--web.listen-address={prom.removeprefix('http://')}"])
        wait_http(prom + "/-/ready", 30, "Prometheus")
        yield fleet, host, prom, manifest
    finally:
        fleet.stop()


def initial_manifest(stable: str) -> dict[str, Any]:
    return {"models": {MODEL: {
        "stable": {"source": stable},
        "min_score": 0.9, "max_drop": 0.02, "min_agreement": 0.9,
        "bake_s": 120, "shadow": {"percent": 50, "max_per_s": 5},
        "rollout": {"steps": [5, 25, 100], "bake_s": 20, "min_nodes": 1,
                    "max_error_ratio": 1.5, "max_p99_ratio": 3},
    }}}


class Cameras(threading.Thread):
    """Two requests a second to each of ``urls``; counts the answers by status."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls = urls
        self.body = (BUNDLE_ROOT / MODEL / "sample-request.json").read_bytes()
        self.stop = threading.Event()
        self.statuses: Counter[int | str] = Counter()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for url in self.urls:
                req = urllib.request.Request(url, data=self.body, method="POST",
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as resp:
                        resp.read()
                        self.statuses[resp.status] += 1
                except urllib.error.HTTPError as exc:
                    self.statuses[exc.code] += 1
                except OSError as exc:
                    self.statuses[type(exc).__name__] += 1


class Watcher(threading.Thread):
    """Each node's served version and cohort once a second; the changes, timed."""

    def __init__(self, ports: dict[str, int], t0: float) -> None:
        super().__init__(daemon=True)
        self.ports, self.t0 = ports, t0
        self.now: dict[str, tuple[str, str]] = {}
        self.changes: list[tuple[float, str, str, str]] = []
        self.stop = threading.Event()

    def poll(self) -> None:
        for node, port in self.ports.items():
            try:
                models = get_json(f"http://127.0.0.1:{port}/v1/models")["models"]
            except (OSError, ValueError):
                continue
            (m,) = [m for m in models if m["name"] == MODEL]
            state = (m["version"], m.get("rollout", ""))
            if self.now.get(node) != state:
                self.now[node] = state
                self.changes.append((time.monotonic() - self.t0, node, *state))

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.poll()


def wait(what: str, limit_s: float, ok: Callable[[], bool]) -> None:
    end = time.monotonic() + limit_s
    while not ok():
        if time.monotonic() > end:
            raise RuntimeError(f"{what}: not reached in {limit_s:g} s")
        time.sleep(0.5)


def push(host: str, folder: Path, version: str) -> str:
    import oras.client

    client = oras.client.OrasClient(hostname=host, insecure=True)
    cwd = Path.cwd()
    try:
        os.chdir(folder)  # ORAS names each layer by the path it is given
        client.push(target=f"{host}/models/{MODEL}:{version}", files=["model.onnx", "model.json"])
    finally:
        os.chdir(cwd)
    return f"oci://{host}/models/{MODEL}:{version}"


def run_sim(n_agents: int, workdir: Path, limit_s: float) -> Path:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    nodes = [f"cell{line}-{n:02d}" for line in range(1, 100) for n in range(1, 6)][:n_agents]
    published = versions_to_publish(workdir / "share")
    with fleet_up(workdir, nodes) as (fleet, host, prom, manifest):
        sources = {v: push(host, folder, v) for v, folder in published.items()}
        wait("every agent ready", 300, lambda: all(_ready(p) for p in fleet.ports.values()))
        t0 = time.monotonic()
        watcher = Watcher(fleet.ports, t0)
        watcher.poll()
        watcher.start()
        cohort25 = [n for n in nodes if in_canary(n, MODEL, 25)]
        loaded = cohort25 + [n for n in nodes if n not in cohort25][:4]
        cameras = Cameras([f"http://127.0.0.1:{fleet.ports[n]}/v2/models/{MODEL}/infer"
                           for n in loaded])
        cameras.start()
        wait("Prometheus sees every agent", 120, lambda: len(_query(
            prom, f'edge_model_canary{{model="{MODEL}"}}')) == len(nodes))
        decisions: list[tuple[float, str]] = []
        controller = fleet.spawn("controller", [
            sys.executable, "-u", "-m", "agent", "fleet", "run", "--prometheus", prom,
            "--manifest", str(manifest), "--interval", "2", "--min-window", "10"],
            env={"PYTHONPATH": str(ROOT)})
        reader = threading.Thread(target=_tail, args=(workdir / "controller.log", decisions,
                                                      t0, controller), daemon=True)
        reader.start()

        def release(version: str) -> float:
            doc = yaml.safe_load(manifest.read_text())
            doc["models"][MODEL]["canary"] = {"source": sources[version], "percent": 5}
            text = yaml.safe_dump(doc, sort_keys=False)
            tmp = manifest.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(manifest)
            return time.monotonic() - t0

        def phase() -> dict[str, Any]:
            return dict(yaml.safe_load(manifest.read_text()).get("status", {}).get(MODEL, {}))

        released: dict[str, float] = {"1.1.0": release("1.1.0")}
        wait("1.1.0 promoted", limit_s, lambda: phase().get("phase") == "stable"
             and yaml.safe_load(manifest.read_text())["models"][MODEL]["stable"]["source"]
             == sources["1.1.0"])
        wait("every node on 1.1.0, stable", 120,
             lambda: set(watcher.now.values()) == {("1.1.0", "stable")})
        released["1.2.0"] = release("1.2.0")
        wait("1.2.0 rolled back", limit_s, lambda: phase().get("phase") == "rolled_back")
        time.sleep(3)
        watcher.poll()
        end = time.monotonic() - t0
        cameras.stop.set()
        watcher.stop.set()
        cameras.join(15)
        final = manifest.read_text()
        status = subprocess.run(
            [sys.executable, "-m", "agent", "fleet", "status", "--prometheus", prom,
             "--manifest", str(manifest)], capture_output=True, text=True, timeout=120,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        recorded = _query(prom, f'model_rollout_version:edge_model_info:count{{model="{MODEL}"}}')
    return write_report(nodes, loaded, released, decisions, watcher.changes, cameras.statuses,
                        final, status.stdout, recorded, end)


def _ready(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


def _query(prom: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    result: list[dict[str, Any]] = get_json(url)["data"]["result"]
    return result


def _tail(path: Path, out: list[tuple[float, str]], t0: float,
          proc: subprocess.Popen[bytes]) -> None:
    """The controller's output lines as they come, timed; holds only when their kind changes."""
    with path.open() as f:
        last = ""
        while True:
            line = f.readline()
            if not line:
                if proc.poll() is not None:
                    return
                time.sleep(0.2)
                continue
            line = line.strip()
            kind = line.split(":", 2)[1].strip() if line.count(":") >= 2 else line
            if kind != "hold" or last != "hold":
                out.append((time.monotonic() - t0, line))
            last = kind


def write_report(nodes: list[str], loaded: list[str], released: dict[str, float],
                 decisions: list[tuple[float, str]],
                 changes: list[tuple[float, str, str, str]], statuses: Counter[int | str],
                 final: str, status: str, recorded: list[dict[str, Any]], end: float) -> Path:
    info = machine()
    lines = [
        f"# Fleet rollout simulation, {date.today().isoformat()}",
        "",
        f"`python -m benchmarks fleet-sim --agents {len(nodes)}` on {info['host']} "
        f"({info['cores']} cores, {info['cpu']}). {len(nodes)} agents on loopback (nodes "
        f"{nodes[0]} .. {nodes[-1]}, own state dirs), a real Prometheus (file SD, 1 s scrape, "
        "the fleet rules), a real OCI registry (1.0.0, 1.1.0, broken 1.2.0 pushed with ORAS), "
        f"cameras (2 requests/s) on {len(loaded)} nodes ({', '.join(loaded)}), "
        "`edge-agent fleet run --interval 2`. Policy: steps 5/25/100 %, rollout bake 20 s, "
        "min_nodes 1, min_score 0.9, max_drop 0.02, min_agreement 0.9 (nodes bake 120 s "
        "with a 50 % shadow). Times are seconds since every agent was ready; the controller's "
        "holds are shown when their kind changes.",
        "",
        f"Cohorts by the nodes' hash: 5 %: {[n for n in nodes if in_canary(n, MODEL, 5)]}; "
        f"25 %: {[n for n in nodes if in_canary(n, MODEL, 25)]}.",
        "",
        "## Controller decisions",
        "",
        *[f"- t={t:6.1f} s: {line}" for t, line in sorted(
            [(t, f"(the release pipeline names {v} as the canary, at 5 %)")
             for v, t in released.items()] + [(t, f"`{line}`") for t, line in decisions])],
        "",
        "## Versions per node (each change, as `/v1/models` showed it)",
        "",
        "| node | timeline |",
        "|---|---|",
    ]
    for node in nodes:
        steps = [f"{t:.0f} s {v} ({r})" for t, n, v, r in changes if n == node]
        lines.append(f"| {node} | {' -> '.join(steps)} |")
    lines += ["", "## Nodes per version over time (10 s buckets)", "", "| t (s) | " +
              " | ".join(("1.0.0", "1.1.0", "1.2.0")) + " |", "|---|---|---|---|"]
    t = 0.0
    while t <= end:
        state: dict[str, str] = {}
        for when, node, version, _ in changes:
            if when <= t:
                state[node] = version
        counts = Counter(state.values())
        lines.append(f"| {t:.0f} | " + " | ".join(str(counts.get(v, 0))
                                                   for v in ("1.0.0", "1.1.0", "1.2.0")) + " |")
        t += 10
    lines += ["", f"Camera answers: {dict(statuses)}.", "",
              "Prometheus' `model_rollout_version:edge_model_info:count` at the end: " +
              ", ".join(f"{r['metric'].get('rollout')} {r['metric'].get('version')}: "
                        f"{r['value'][1]}" for r in recorded) + ".",
              "", "## `edge-agent fleet status` at the end", "", "```", status.rstrip(), "```",
              "", "## The manifest at the end", "", "```yaml", final.rstrip(), "```", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{date.today().isoformat()}-fleet-sim-{len(nodes)}-agents.md"
    out.write_text("\n".join(lines))
    return out


def main(args: argparse.Namespace) -> int:
    out = run_sim(args.agents, args.workdir, args.limit)
    print(out)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("fleet-sim", help="a simulated fleet on loopback rolled out by "
                       "edge-agent fleet; writes benchmarks/results/<date>-fleet-sim-*.md")
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/edge-agent-fleet-sim"))
    p.add_argument("--limit", type=float, default=600, help="seconds allowed per rollout")
