"""Where the fleet controller writes, and its command line.

The ConfigMap store goes through the official Kubernetes client to a SMALL FAKE Kubernetes API
at the HTTP level (no API server can run here): GET and PATCH of one ConfigMap, bearer-token
auth, and the API server's optimistic concurrency (a patch whose ``metadata.resourceVersion``
is not the current one is answered 409 Conflict). The fake is written from the API's
documented behaviour; what the tests check is what the client sends. The URL store goes to a
small manifest share that takes conditional PUTs. The command line (dry run, a write, `run`,
bad input) goes through a real, empty Prometheus.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from support import free_port, kustomize, require, start_prometheus, stop_process

from agent.cli import build_parser
from agent.fleet.manifest_store import ConfigMapStore, ConflictError, StoreError, open_store

pytestmark = pytest.mark.integration

TOKEN = "fake-sa-token"
PATH = "/api/v1/namespaces/edge-agent/configmaps/fleet"
MANIFEST = """\
models:
  fusion:
    stable: {source: "file:///share/fusion/1.0.0/model.json"}
    canary: {source: "file:///share/fusion/1.0.1/model.json", percent: 5}
    rollout: {steps: [5, 100], bake_s: 60, min_nodes: 1}
"""


class FakeKubernetes(ThreadingHTTPServer):
    """One ConfigMap, as the API server keeps it; every request recorded."""

    def __init__(self, namespace: str = "edge-agent", name: str = "fleet") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.namespace, self.name = namespace, name
        self.path = f"/api/v1/namespaces/{namespace}/configmaps/{name}"
        self.lock = threading.Lock()
        self.version = 41
        self.data = {"fleet.yaml": MANIFEST, "other": "kept"}
        self.requests: list[tuple[str, str, str, dict]] = []  # method, path, type, body

    def obj(self) -> dict:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": self.name, "namespace": self.namespace,
                             "resourceVersion": str(self.version)},
                "data": dict(self.data)}


class _Handler(BaseHTTPRequestHandler):
    server: FakeKubernetes

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, code: int, reason: str, message: str) -> None:
        self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                          "reason": reason, "message": message, "code": code})

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._status(401, "Unauthorized", "Unauthorized")
            return False
        return True

    def do_GET(self) -> None:
        self.server.requests.append(("GET", self.path, "", {}))
        if not self._authorised():
            return
        if self.path.split("?")[0] != self.server.path:
            self._status(404, "NotFound", "configmaps not found")
            return
        with self.server.lock:
            self._send(200, self.server.obj())

    def do_PATCH(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        kind = self.headers.get("Content-Type", "")
        self.server.requests.append(("PATCH", self.path, kind, body))
        if not self._authorised():
            return
        if kind not in ("application/merge-patch+json",
                        "application/strategic-merge-patch+json"):
            self._status(415, "UnsupportedMediaType", kind)
            return
        with self.server.lock:
            wanted = body.get("metadata", {}).get("resourceVersion")
            if wanted is not None and wanted != str(self.server.version):
                self._status(409, "Conflict", "Operation cannot be fulfilled on configmaps "
                             "\"fleet\": the object has been modified")
                return
            self.server.data.update(body.get("data", {}))
            self.server.version += 1
            self._send(200, self.server.obj())


@contextlib.contextmanager
def fake_kubernetes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    **where: str) -> Iterator[FakeKubernetes]:
    server = FakeKubernetes(**where)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {
            "server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "fake", "user": {"token": TOKEN}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubernetes]:
    with fake_kubernetes(tmp_path, monkeypatch) as server:
        yield server


def test_the_configmap_store_reads_and_patches_with_its_resource_version(kube):
    store = open_store("configmap://edge-agent/fleet")
    assert isinstance(store, ConfigMapStore)
    read = store.read()
    assert (read.text, read.version) == (MANIFEST, "41")
    store.write(MANIFEST + "# next\n", read.version)
    method, path, kind, body = kube.requests[-1]
    assert (method, path) == ("PATCH", PATH)
    assert kind.endswith("merge-patch+json")
    assert body == {"metadata": {"resourceVersion": "41"},
                    "data": {"fleet.yaml": MANIFEST + "# next\n"}}
    assert kube.data == {"fleet.yaml": MANIFEST + "# next\n", "other": "kept"}
    # Written by someone else since this read: 409 -> ConflictError, nothing changed.
    with pytest.raises(ConflictError, match="changed since it was read"):
        store.write(MANIFEST + "# stale\n", read.version)
    assert kube.data["fleet.yaml"] == MANIFEST + "# next\n"


def test_configmap_errors_are_clear(kube, tmp_path, monkeypatch):
    with pytest.raises(StoreError, match=r"no key 'fleet\.yml'"):
        open_store("configmap://edge-agent/fleet/fleet.yml").read()
    with pytest.raises(StoreError, match="404"):
        open_store("configmap://edge-agent/nope").read()
    config = yaml.safe_load(Path(str(tmp_path / "kubeconfig")).read_text())
    config["users"][0]["user"]["token"] = "wrong"
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    with pytest.raises(StoreError, match="401"):
        open_store("configmap://edge-agent/fleet").read()
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(StoreError, match="no Kubernetes credentials"):
        open_store("configmap://edge-agent/fleet").read()


@pytest.fixture
def empty_prometheus(tmp_path: Path) -> Iterator[str]:
    binary = shutil.which("prometheus")
    require(binary is not None, "prometheus (apt-get install prometheus)")
    assert binary is not None
    config = tmp_path / "prometheus.yml"
    config.write_text("global: {scrape_interval: 1s}\nscrape_configs: []\n")
    proc, url = start_prometheus(binary, config, tmp_path / "tsdb")
    try:
        yield url
    finally:
        stop_process(proc, 10)


def test_fleet_step_dry_run_prints_the_patch_and_a_step_sends_it(kube, empty_prometheus):
    args = [sys.executable, "-m", "agent", "fleet", "step", "--prometheus", empty_prometheus,
            "--manifest", "configmap://edge-agent/fleet"]
    dry = subprocess.run([*args, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "PATCH configmaps/fleet in namespace edge-agent" in dry.stdout
    assert '"resourceVersion": "41"' in dry.stdout
    assert "+status:" in dry.stdout
    assert "fusion: step -> 5%: rollout of file:///share/fusion/1.0.1/model.json" in dry.stdout
    assert [r[0] for r in kube.requests] == ["GET"]  # nothing written
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert [r[0] for r in kube.requests] == ["GET", "GET", "PATCH"]
    doc = yaml.safe_load(kube.data["fleet.yaml"])
    assert doc["status"]["fusion"]["phase"] == "canary"
    assert doc["status"]["fusion"]["percent"] == 5
    # A second pass on the same data: read, nothing to write.
    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "hold: baking at 5%" in again.stdout
    assert [r[0] for r in kube.requests] == ["GET", "GET", "PATCH", "GET"]


class _ManifestServer(BaseHTTPRequestHandler):
    """A manifest share that takes conditional PUTs (as WebDAV or an object store does)."""

    body = MANIFEST.encode()
    etag = '"1"'
    puts: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("ETag", type(self).etag)
        self.send_header("Content-Length", str(len(type(self).body)))
        self.end_headers()
        self.wfile.write(type(self).body)

    def do_PUT(self) -> None:
        data = self.rfile.read(int(self.headers["Content-Length"]))
        cls = type(self)
        cls.puts.append(self.headers.get("If-Match", ""))
        if self.headers.get("If-Match") != cls.etag:
            self.send_response(412)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        cls.body, cls.etag = data, f'"{int(cls.etag.strip(chr(34))) + 1}"'
        self.send_response(204)
        self.end_headers()


VERBS = {"GET": "get", "PATCH": "patch", "PUT": "update", "POST": "create", "DELETE": "delete"}


def test_the_controllers_role_allows_exactly_the_requests_its_deployment_makes(
    tmp_path, monkeypatch, empty_prometheus
):
    """k3s/fleet's Deployment, run as written (its args, against the fake API), makes only
    requests its Role grants, and its Role grants nothing it does not use."""
    docs = kustomize(Path(__file__).resolve().parents[2] / "k3s" / "fleet")
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (role,) = [d for d in docs if d["kind"] == "Role"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = list(container["args"])
    args[args.index("--prometheus") + 1] = empty_prometheus
    parsed = build_parser().parse_args(args)
    namespace, name = parsed.manifest.removeprefix("configmap://").split("/")[:2]
    with fake_kubernetes(tmp_path, monkeypatch, namespace=namespace, name=name) as kube:
        cli = [sys.executable, "-m", "agent", *args]
        cli[cli.index("run")] = "step"  # one pass of what `run` repeats
        cli = cli[:cli.index("--interval")]
        for extra in (["--dry-run"], []):
            done = subprocess.run(cli + extra, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        assert yaml.safe_load(kube.data["fleet.yaml"])["status"]["fusion"]["phase"] == "canary"
        used = set()
        for method, path, _, _ in kube.requests:
            parts = path.split("?")[0].split("/")  # /api/v1/namespaces/NS/configmaps/NAME
            assert parts[1:4] == ["api", "v1", "namespaces"], path
            used.add(("", parts[5], parts[4], parts[6], VERBS[method]))
    assert role["metadata"]["namespace"] == namespace
    granted = {("", resource, namespace, resource_name, verb)
               for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for resource_name in rule["resourceNames"]
               for verb in rule["verbs"] if group == ""}
    assert used == granted, (used, granted)


@pytest.mark.system
@pytest.mark.timeout(900)  # it pays for the fleet image's build
def test_the_fleet_image_steps_a_rollout_as_deployed(
    docker, fleet_controller_image, tmp_path, monkeypatch, empty_prometheus
):
    """The controller's image (docker/Dockerfile, EXTRA=cpu,fleet), run as k3s/fleet runs it
    (its command, uid 10001, read-only root, no capabilities), takes a rollout's first step
    through the Kubernetes client it carries."""
    with fake_kubernetes(tmp_path, monkeypatch, namespace="edge-agent",
                         name="edge-agent-fleet") as kube:
        kubeconfig = Path(os.environ["KUBECONFIG"])
        kubeconfig.chmod(0o644)  # readable by the image's uid
        done = subprocess.run(
            ["docker", "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
             "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
             "-v", f"{kubeconfig}:/kube/config:ro", "-e", "KUBECONFIG=/kube/config",
             "--entrypoint", "/opt/edge-agent/bin/edge-agent", fleet_controller_image,
             "fleet", "step", "--prometheus", empty_prometheus,
             "--manifest", "configmap://edge-agent/edge-agent-fleet"],
            env={**os.environ, **docker}, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "fusion: step -> 5%" in done.stdout
        assert [r[0] for r in kube.requests] == ["GET", "PATCH"]
        assert yaml.safe_load(kube.data["fleet.yaml"])["status"]["fusion"]["percent"] == 5
    # The liveness probe's command runs in the image too (here before any pass: it fails, and
    # says why).
    probe = subprocess.run(
        ["docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
         "--entrypoint", "/opt/edge-agent/bin/edge-agent", fleet_controller_image,
         "fleet", "alive", "--heartbeat", "/tmp/heartbeat", "--max-age", "600"],
        env={**os.environ, **docker}, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 1, probe.stdout + probe.stderr
    assert "no pass has finished" in probe.stderr


def test_the_url_store_puts_with_if_match_and_loses_a_race_cleanly():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ManifestServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store = open_store(f"http://127.0.0.1:{server.server_address[1]}/fleet.yaml")
        read = store.read()
        assert (read.text, read.version) == (MANIFEST, '"1"')
        store.write(MANIFEST + "# next\n", read.version)
        assert _ManifestServer.body == (MANIFEST + "# next\n").encode()
        with pytest.raises(ConflictError, match="changed since it was read"):
            store.write(MANIFEST + "# stale\n", read.version)
        assert _ManifestServer.puts == ['"1"', '"1"']
        assert _ManifestServer.body.endswith(b"# next\n")
        assert "If-Match: \"2\"" in store.preview("x\n", store.read())
    finally:
        server.shutdown()
        server.server_close()


def test_the_command_line_says_what_is_wrong(tmp_path, empty_prometheus):
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(MANIFEST)

    def fleet(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "agent", "fleet", *args],
                              capture_output=True, text=True, timeout=120)

    port = free_port()  # nothing listens there
    done = fleet("step", "--prometheus", f"http://127.0.0.1:{port}", "--manifest", str(manifest))
    assert done.returncode == 1
    assert done.stderr.startswith(f"edge-agent: Prometheus at http://127.0.0.1:{port} did not "
                                  "answer"), done.stderr
    assert manifest.read_text() == MANIFEST
    manifest.write_text(MANIFEST.replace("steps: [5, 100]", "steps: [5, 50]"))
    done = fleet("step", "--prometheus", empty_prometheus, "--manifest", str(manifest))
    assert done.returncode == 1
    assert "models.fusion.rollout.steps: must increase, above 0, and end in 100" in done.stderr
    done = fleet("status", "--prometheus", empty_prometheus, "--manifest", str(tmp_path / "no"))
    assert done.returncode == 1
    assert "cannot read the fleet manifest" in done.stderr
    manifest.write_text(MANIFEST)
    done = fleet("step", "--prometheus", empty_prometheus, "--manifest", str(manifest),
                 "--selector", 'job="edge-agent"}')
    assert done.returncode == 1
    assert "refused" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def alive(beat: Path, max_age: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", "fleet", "alive", "--heartbeat",
                           str(beat), "--max-age", str(max_age)],
                          capture_output=True, text=True, timeout=120)


def test_fleet_run_steps_until_stopped_and_its_heartbeat_says_it_is_alive(
        tmp_path, empty_prometheus):
    manifest = tmp_path / "fleet.yaml"
    manifest.write_text(MANIFEST)
    beat = tmp_path / "heartbeat"
    before = alive(beat, 600)  # no pass yet: the liveness probe fails, and says why
    assert before.returncode == 1
    assert "no pass has finished" in before.stderr, before.stderr
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "agent", "fleet", "run", "--prometheus", empty_prometheus,
         "--manifest", str(manifest), "--interval", "0.5", "--heartbeat", str(beat)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while len(lines) < 3:  # the step, then passes that hold (however slow a pass is)
            line = proc.stdout.readline()
            assert line, f"fleet run ended after {lines}"
            lines.append(line.rstrip("\n"))
        now = alive(beat, 600)
        assert now.returncode == 0, now.stderr
        assert "alive: the last pass finished" in now.stdout
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines += out.splitlines()
    assert lines[0].startswith("fusion: step -> 5%"), lines
    assert len(lines) >= 3, lines
    assert all(line.startswith("fusion: hold: baking at 5%") for line in lines[1:]), lines
    assert yaml.safe_load(manifest.read_text())["status"]["fusion"]["percent"] == 5
    # Stopped, its heartbeat grows old: past --max-age the probe fails (and the kubelet would
    # restart the pod).
    old = time.time() - 700
    os.utime(beat, (old, old))
    stale = alive(beat, 600)
    assert stale.returncode == 1
    assert "more than 600 s" in stale.stderr, stale.stderr
