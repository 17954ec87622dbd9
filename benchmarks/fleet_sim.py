"""``python -m benchmarks fleet-sim``: a simulated fleet on loopback, rolled out by the real
controller, with nodes cut off and the controller killed on the way.

N agents (``edge-agent serve``, each with its own node name and state dir) follow one
manifest; a real Prometheus scrapes their ``/metrics/summary`` through file service discovery
(with the fleet's rules); a real OCI registry (Debian's docker-registry) holds three versions
of the fusion model pushed with ORAS: 1.0.0 (the bundled bytes), 1.1.0 (good) and 1.2.0
(broken: confident and wrong, it fails the golden set); cameras post to several nodes and
``/health`` is polled on every node; ``edge-agent fleet run`` steps the manifest.

During the 1.1.0 rollout two nodes of its 25 % cohort are cut off: one's process is stopped
(SIGSTOP) from the 5 % step until after the 25 % step began, then continued; the other runs in
its own network namespace and its uplink (manifest and registry) is unplugged from the 5 % step
to the 100 % step while its LAN (its cameras, the site's Prometheus) stays up. The controller
is killed (SIGKILL) during the 25 % bake and started again. 1.1.0 goes through the steps to
every node and is promoted; 1.2.0 is refused by the nodes of its first cohort and rolled back.
Writes a report (decisions, versions per node over time) and a plot of nodes per version
(matplotlib, ``.[bench]``) to ``benchmarks/results/``; :func:`run_sim` returns the figures.

Needs ``.[cpu,test]`` (onnx, oras), ``prometheus`` and ``docker-registry`` (apt), and root
for the network namespace (``ip netns``; ``--no-netns``: the uplink is not cut).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent.models.manifest import in_canary
from benchmarks.common import RESULTS
from benchmarks.fleet_sim_parts import (
    HUB,
    Camera,
    Gate,
    HealthPoller,
    ManifestServer,
    NodeNet,
    Watcher,
    netns_problem,
)
from benchmarks.fleet_sim_report import write_report
from inference.bundled import BUNDLE_ROOT

ROOT = Path(__file__).resolve().parent.parent
MODEL = "fusion"
BAKE_S = 20  # each rollout step's bake


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
    urls: dict[str, str] = field(default_factory=dict)  # node -> its agent's base URL
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

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
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)  # a stopped process holds SIGTERM
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
def fleet_up(workdir: Path, nodes: list[str], net: NodeNet | None, uplink_node: str | None
             ) -> Iterator[tuple[Fleet, str, str, Path]]:
    """Registry, agents and Prometheus up; yields (fleet, registry host, prometheus url,
    manifest path). With ``net``, ``uplink_node`` runs in that namespace and reads the
    manifest over HTTP through its uplink."""
    fleet = Fleet(workdir)
    served: ManifestServer | None = None
    try:
        registry = shutil.which("docker-registry")
        prometheus = shutil.which("prometheus")
        if registry is None or prometheus is None:
            raise RuntimeError("needs docker-registry and prometheus (apt-get install "
                               "docker-registry prometheus)")
        hub = HUB if net is not None else "127.0.0.1"
        host = f"{hub}:{free_port()}"
        (workdir / "registry.yml").write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {workdir / 'registry'}}}}}\n"
            f"http: {{addr: '{host}'}}\n")
        fleet.spawn("registry", [registry, "serve", str(workdir / "registry.yml")])
        wait_http(f"http://{host}/v2/", 60, "the registry")

        manifest = workdir / "fleet.yaml"
        manifest.write_text(yaml.safe_dump(initial_manifest(f"oci://{host}/models/fusion:1.0.0"),
                                           sort_keys=False))
        if net is not None:
            served = ManifestServer(manifest, HUB)
        for node in nodes:
            port = free_port()
            config = workdir / "nodes" / node / "config.yaml"
            config.parent.mkdir(parents=True)
            lifecycle: dict[str, Any] = {
                "manifest": str(manifest), "node_name": node, "poll_interval_s": 5,
                "watch_interval_s": 1, "insecure_registries": [host]}
            command = [sys.executable, "-m", "agent", "serve", "--config", str(config)]
            listen = "127.0.0.1"
            fleet.urls[node] = f"http://127.0.0.1:{port}"
            if node == uplink_node and net is not None and served is not None:
                # Its own network: it listens on its interfaces, its cameras and Prometheus
                # reach it on its LAN address, the manifest and the registry through its uplink.
                listen = "0.0.0.0"
                fleet.urls[node] = f"http://{net.address}:{port}"
                command = net.command(command)
                lifecycle.update(manifest=served.url, poll_interval_s=3, retry_attempts=2,
                                 retry_max_s=0.5)
            config.write_text(yaml.safe_dump({
                "host": listen, "port": port, "state_dir": str(config.parent / "state"),
                "log_format": "json",
                "models": [{"name": MODEL, "bundled": MODEL}],
                "runtime": {"intra_op_threads": 1},
                "batching": {"max_batch": 2},
                "lifecycle": lifecycle,
            }))
            fleet.agents[node] = fleet.spawn(f"agent-{node}", command,
                                             env={"PYTHONPATH": str(ROOT)})
        targets = [{"targets": [fleet.urls[n].removeprefix("http://")], "labels": {"node": n}}
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
        wait_http(prom + "/-/ready", 120, "Prometheus")
        yield fleet, host, prom, manifest
    finally:
        fleet.stop()
        if served is not None:
            served.close()


def initial_manifest(stable: str) -> dict[str, Any]:
    return {"models": {MODEL: {
        "stable": {"source": stable},
        "min_score": 0.9, "max_drop": 0.02, "min_agreement": 0.9,
        "bake_s": 120, "shadow": {"percent": 50, "max_per_s": 5},
        "rollout": {"steps": [5, 25, 100], "bake_s": BAKE_S, "min_nodes": 1,
                    "max_error_ratio": 1.5, "max_p99_ratio": 3},
    }}}


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


@dataclass
class SimResult:
    """What the simulation saw; times are seconds since every agent was ready."""

    nodes: list[str]
    cohorts: dict[int, list[str]]  # percent -> its nodes, by the nodes' hash
    cameras_on: list[str]
    stopped_node: str  # SIGSTOP from the 5 % step to a few seconds into the 25 % step
    uplink_node: str | None  # uplink unplugged from the 5 % step to the 100 % step
    released: dict[str, float]  # version -> when the release named it the canary
    events: list[tuple[float, str]]  # what the simulation did (stops, unplugs, kills)
    decisions: list[tuple[float, int, str]]  # (t, controller run 1 or 2, the line it printed)
    changes: list[tuple[float, str, str, str]]  # (t, node, version, rollout) as /v1/models said
    camera_answers: dict[str, dict[str, int]]  # node -> status -> count
    skipped_while_stopped: int  # camera requests and probes not sent while the process was stopped
    answered_while_stopped: bool  # a 1 s /health probe of the stopped process got an answer
    health_checks: int
    health_bad: list[tuple[float, str, str]]  # every /health answer that was not 200
    restart: dict[str, Any]  # the manifest's status when the controller was killed, and after
    returned: dict[str, float]  # cut-off node -> when it came back
    connected_while_cut: float | None  # the unplugged node's edge_control_plane_connected
    final_versions: dict[str, str]
    end_s: float
    report: Path | None = None
    plot: Path | None = None

    def actions(self, version: str) -> list[str]:
        """The controller's actions (``step -> 25%``, ``hold``, ...) for one release."""
        start = self.released[version]
        later = [t for v, t in self.released.items() if t > start]
        stop = min(later) if later else float("inf")
        return [line.split(":")[1].strip() for t, _, line in self.decisions
                if start <= t < stop and line.count(":") >= 2]

    def steps(self, version: str) -> list[float]:
        return [float(a.removeprefix("step -> ").rstrip("%")) for a in self.actions(version)
                if a.startswith("step -> ")]

    def outcome(self, version: str) -> str | None:
        """How the release ended: ``promote`` or ``rollback`` (None: neither)."""
        return next((a for a in self.actions(version) if a in ("promote", "rollback")), None)

    def most_nodes_on(self, version: str) -> int:
        """The most nodes that served ``version`` at one time."""
        state: dict[str, str] = {}
        most = 0
        for _, node, v, _ in sorted(self.changes):
            state[node] = v
            most = max(most, sum(1 for x in state.values() if x == version))
        return most

    def caught_up(self, node: str, version: str) -> float | None:
        """Seconds from the node's return to its serving ``version`` (None: it never did)."""
        back = self.returned.get(node)
        if back is None:
            return None
        state = ""
        for t, n, v, _ in sorted(self.changes):
            if n == node:
                state = v
                if t >= back and state == version:
                    return max(t - back, 0.0)
        return None

    def failed_requests(self) -> int:
        return sum(n for answers in self.camera_answers.values()
                   for status, n in answers.items() if status != "200")


def run_sim(n_agents: int, workdir: Path, limit_s: float, results: Path = RESULTS,
            netns: bool = True) -> SimResult:
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    nodes = [f"cell{line}-{n:02d}" for line in range(1, 100) for n in range(1, 6)][:n_agents]
    cohorts = {p: [n for n in nodes if in_canary(n, MODEL, p)] for p in (5, 25)}
    # The cut-off nodes: of the 25 % cohort, not the 5 % one (that node is the first canary).
    cut = [n for n in cohorts[25] if n not in cohorts[5]]
    if len(cut) < (2 if netns else 1) or not cohorts[5]:
        raise RuntimeError(f"{n_agents} agents give too small cohorts: {cohorts}")
    stopped_node, uplink_node = cut[0], (cut[1] if netns else None)
    net: NodeNet | None = None
    if netns:
        problem = netns_problem()
        if problem is not None:
            raise RuntimeError(f"{problem} (--no-netns: the uplink is not cut)")
        net = NodeNet()
        net.up()
    published = versions_to_publish(workdir / "share")
    try:
        with fleet_up(workdir, nodes, net, uplink_node) as (fleet, host, prom, manifest):
            return _rollouts(fleet, host, prom, manifest, published, nodes, cohorts,
                             stopped_node, uplink_node, net, limit_s, results)
    finally:
        if net is not None:
            net.down_all()


def _rollouts(fleet: Fleet, host: str, prom: str, manifest: Path, published: dict[str, Path],
              nodes: list[str], cohorts: dict[int, list[str]], stopped_node: str,
              uplink_node: str | None, net: NodeNet | None, limit_s: float,
              results: Path) -> SimResult:
    sources = {v: push(host, folder, v) for v, folder in published.items()}
    # Ready means its models are loaded and its first sync placed it in a cohort: before that
    # /v1/models has no ``rollout`` and the timeline would start from an unplaced node.
    wait("every agent ready", 300, lambda: all(_ready(u) for u in fleet.urls.values()))
    wait("every agent placed in its cohort", 300,
         lambda: all(_placed(u) for u in fleet.urls.values()))
    t0 = time.monotonic()
    gates = {n: Gate() for n in nodes}
    watcher = Watcher(MODEL, fleet.urls, gates, t0)
    watcher.poll()
    watcher.start()
    health = HealthPoller(fleet.urls, gates, t0)
    health.start()
    loaded = cohorts[25] + [n for n in nodes if n not in cohorts[25]][:4]
    body = (BUNDLE_ROOT / MODEL / "sample-request.json").read_bytes()
    cameras = {n: Camera(f"{fleet.urls[n]}/v2/models/{MODEL}/infer", body, gates[n])
               for n in loaded}
    for camera in cameras.values():
        camera.start()
    wait("Prometheus sees every agent", 120, lambda: len(_query(
        prom, f'edge_model_canary{{model="{MODEL}"}}')) == len(nodes))
    events: list[tuple[float, str]] = []
    decisions: list[tuple[float, int, str]] = []

    def note(what: str) -> None:
        events.append((time.monotonic() - t0, what))

    def controller(run: int) -> subprocess.Popen[bytes]:
        proc = fleet.spawn(f"controller-{run}", [
            sys.executable, "-u", "-m", "agent", "fleet", "run", "--prometheus", prom,
            "--manifest", str(manifest), "--interval", "2", "--min-window", "10"],
            env={"PYTHONPATH": str(ROOT)})
        threading.Thread(target=_tail, args=(fleet.workdir / f"controller-{run}.log",
                                             decisions, t0, proc, run), daemon=True).start()
        return proc

    def release(version: str) -> float:
        doc = yaml.safe_load(manifest.read_text())
        doc["models"][MODEL]["canary"] = {"source": sources[version], "percent": 5}
        tmp = manifest.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        tmp.replace(manifest)
        return time.monotonic() - t0

    def status() -> dict[str, Any]:
        return dict(yaml.safe_load(manifest.read_text()).get("status", {}).get(MODEL, {}))

    def at_step(percent: float) -> Callable[[], bool]:
        return lambda: status().get("phase") == "canary" and status().get("percent") == percent

    first = controller(1)
    released = {"1.1.0": release("1.1.0")}
    returned: dict[str, float] = {}
    connected_while_cut: float | None = None

    # The 5 % step: one node of the 25 % cohort stopped, another's uplink unplugged.
    wait("1.1.0 at 5%", limit_s, at_step(5))
    time.sleep(1)
    gate = gates[stopped_node]
    with gate.lock:  # no request in flight to it across the stop
        gate.stopped = True
        os.kill(fleet.agents[stopped_node].pid, signal.SIGSTOP)
    note(f"{stopped_node}: process stopped (SIGSTOP)")
    if net is not None and uplink_node is not None:
        net.unplug()
        note(f"{uplink_node}: uplink down (manifest, registry); LAN up")
    time.sleep(2)
    answered = _ready(fleet.urls[stopped_node], timeout=1)

    # The 25 % step: the stopped node continued; then the controller killed and started again.
    wait("1.1.0 at 25%", limit_s, at_step(25))
    time.sleep(5)
    with gate.lock:
        os.kill(fleet.agents[stopped_node].pid, signal.SIGCONT)
        gate.stopped = False
    returned[stopped_node] = time.monotonic() - t0
    note(f"{stopped_node}: process continued (SIGCONT)")
    time.sleep(3)
    restart: dict[str, Any] = {"at_kill": status()}
    first.send_signal(signal.SIGKILL)
    first.wait()
    note("controller killed (SIGKILL)")
    time.sleep(4)
    controller(2)
    note("controller started again")
    wait("the restarted controller's first decision", 60,
         lambda: any(run == 2 for _, run, _ in decisions))
    restart["after"] = status()
    restart["first_line"] = next(line for _, run, line in decisions if run == 2)

    # The 100 % step: the uplink plugged in again.
    if net is not None and uplink_node is not None:
        wait("1.1.0 at 100% or promoted", limit_s, lambda: at_step(100)() or (
            status().get("phase") == "stable" and status().get("source") == sources["1.1.0"]))
        time.sleep(5)
        cut_off = _query(prom, f'edge_control_plane_connected{{node="{uplink_node}"}}')
        connected_while_cut = float(cut_off[0]["value"][1]) if cut_off else None
        net.plug()
        returned[uplink_node] = time.monotonic() - t0
        note(f"{uplink_node}: uplink up")
    wait("1.1.0 promoted", limit_s, lambda: status().get("phase") == "stable"
         and yaml.safe_load(manifest.read_text())["models"][MODEL]["stable"]["source"]
         == sources["1.1.0"])
    wait("every node on 1.1.0, stable", 120,
         lambda: set(watcher.now.values()) == {("1.1.0", "stable")}
         and len(watcher.now) == len(nodes))

    released["1.2.0"] = release("1.2.0")
    wait("1.2.0 rolled back", limit_s, lambda: status().get("phase") == "rolled_back")
    time.sleep(3)
    watcher.poll()
    end = time.monotonic() - t0
    for stop in (*(c.stop for c in cameras.values()), health.stop, watcher.stop):
        stop.set()
    for thread in (*cameras.values(), health, watcher):
        thread.join(30)
    fleet_status = subprocess.run(
        [sys.executable, "-m", "agent", "fleet", "status", "--prometheus", prom,
         "--manifest", str(manifest)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    recorded = _query(prom, f'model_rollout_version:edge_model_info:count{{model="{MODEL}"}}')
    result = SimResult(
        nodes=nodes, cohorts=cohorts, cameras_on=loaded, stopped_node=stopped_node,
        uplink_node=uplink_node, released=released, events=events,
        decisions=sorted(decisions), changes=list(watcher.changes),
        camera_answers={n: {str(k): v for k, v in c.statuses.items()}
                        for n, c in cameras.items()},
        skipped_while_stopped=gate.skipped, answered_while_stopped=answered,
        health_checks=sum(health.checks.values()),
        health_bad=[(t, n, str(s)) for t, n, s in health.bad], restart=restart,
        returned=returned, connected_while_cut=connected_while_cut,
        final_versions={n: v for n, (v, _) in watcher.now.items()}, end_s=end)
    result.report, result.plot = write_report(result, manifest.read_text(),
                                              fleet_status.stdout, recorded, results)
    return result


def _ready(url: str, timeout: float = 2) -> bool:
    try:
        urllib.request.urlopen(f"{url}/health", timeout=timeout).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


def _placed(url: str) -> bool:
    try:
        models = get_json(f"{url}/v1/models")["models"]
    except (OSError, ValueError):
        return False
    return any(m["name"] == MODEL and m.get("rollout") for m in models)


def _query(prom: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    result: list[dict[str, Any]] = get_json(url)["data"]["result"]
    return result


def _tail(path: Path, out: list[tuple[float, int, str]], t0: float,
          proc: subprocess.Popen[bytes], run: int) -> None:
    """The controller's output lines as they come, timed."""
    with path.open() as f:
        while True:
            line = f.readline()
            if not line:
                if proc.poll() is not None:
                    return
                time.sleep(0.2)
                continue
            out.append((time.monotonic() - t0, run, line.strip()))


def main(args: argparse.Namespace) -> int:
    result = run_sim(args.agents, args.workdir, args.limit, netns=args.netns)
    print(result.report)
    if result.plot is not None:
        print(result.plot)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("fleet-sim", help="a simulated fleet on loopback rolled out by "
                       "edge-agent fleet; writes benchmarks/results/<date>-fleet-sim-*.md")
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/edge-agent-fleet-sim"))
    p.add_argument("--limit", type=float, default=600, help="seconds allowed per rollout step")
    p.add_argument("--no-netns", dest="netns", action="store_false",
                   help="no network namespace (no root): the uplink cut is left out")
