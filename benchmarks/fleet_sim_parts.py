"""The fleet simulation's moving parts: a node's uplink in a network namespace, the manifest
served over HTTP, the cameras, the /health poller and the watcher of served versions.

Each node has a :class:`Gate`: the simulation holds it while it stops or resumes the node's
process, so no camera request or probe is in flight across a SIGSTOP, and none is sent while
the process is stopped (a stopped process cannot answer: that is the point of the stop).
"""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The hub: where the registry and the manifest server listen, reachable from the host and,
# through the uplink, from the node in its namespace. An address on the host's loopback device
# in a private range; the node's uplink and LAN are veth pairs in private ranges too.
HUB = "10.213.0.1"
NETNS = "edge-sim-node"
UPLINK = ("easim-up", "up0", "10.213.1.1", "10.213.1.2")  # host dev, node dev, host ip, node ip
LAN = ("easim-lan", "lan0", "10.214.1.1", "10.214.1.2")


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def netns_problem() -> str | None:
    """Why a network namespace cannot be made here (None: it can)."""
    if shutil.which("ip") is None:
        return "needs the ip command (apt-get install iproute2)"
    probe = subprocess.run(["ip", "netns", "add", "edge-sim-probe"], capture_output=True,
                           text=True, timeout=30)
    if probe.returncode != 0:
        return f"cannot make a network namespace (root needed): {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", "edge-sim-probe"], capture_output=True, timeout=30)
    return None


class NodeNet:
    """One node's namespace: an uplink (to the hub: manifest, registry) and a LAN (its
    cameras, and the site's Prometheus), each a veth pair to the host. Unplugging the uplink
    (``ip link set up0 down`` inside the namespace) leaves the LAN as it was."""

    def __init__(self) -> None:
        self.name = NETNS
        self.address = LAN[3]  # where its cameras and Prometheus reach the agent

    def up(self) -> None:
        self.down_all()
        _ip("addr", "replace", f"{HUB}/32", "dev", "lo")
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        for host_dev, node_dev, host_ip, node_ip in (UPLINK, LAN):
            _ip("link", "add", host_dev, "type", "veth", "peer", "name", node_dev, "netns",
                self.name)
            _ip("addr", "add", f"{host_ip}/30", "dev", host_dev)
            _ip("link", "set", host_dev, "up")
            _ip("-n", self.name, "addr", "add", f"{node_ip}/30", "dev", node_dev)
            _ip("-n", self.name, "link", "set", node_dev, "up")
        self.plug()

    def unplug(self) -> None:
        _ip("-n", self.name, "link", "set", UPLINK[1], "down")

    def plug(self) -> None:
        _ip("-n", self.name, "link", "set", UPLINK[1], "up")
        # The default route went with the link: the hub is reached through the uplink only.
        _ip("-n", self.name, "route", "replace", "default", "via", UPLINK[2])

    def down_all(self) -> None:
        for args in (["netns", "del", self.name], ["link", "del", UPLINK[0]],
                     ["link", "del", LAN[0]], ["addr", "del", f"{HUB}/32", "dev", "lo"]):
            subprocess.run(["ip", *args], capture_output=True, timeout=30)

    def command(self, args: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]


class ManifestServer:
    """The manifest file over HTTP (GET), for the node that reads it through its uplink."""

    def __init__(self, path: Path, host: str) -> None:
        handler = functools.partial(_ManifestHandler, path)
        self.server = http.server.ThreadingHTTPServer((host, 0), handler)
        self.url = f"http://{host}:{self.server.server_address[1]}/fleet.yaml"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _ManifestHandler(http.server.BaseHTTPRequestHandler):
    def __init__(self, path: Path, *args: Any, **kwargs: Any) -> None:
        self.path_on_disk = path
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        body = self.path_on_disk.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/yaml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Gate:
    """Held around every request to a node; ``stopped`` while its process is stopped."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False
    skipped: int = 0  # camera requests and probes not sent while stopped


class Camera(threading.Thread):
    """Two requests a second to one node; counts the answers by status."""

    def __init__(self, url: str, body: bytes, gate: Gate) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.gate = url, body, gate
        self.stop = threading.Event()
        self.statuses: Counter[int | str] = Counter()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            with self.gate.lock:
                if self.gate.stopped:
                    self.gate.skipped += 1
                    continue
                req = urllib.request.Request(self.url, data=self.body, method="POST",
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=20) as resp:
                        resp.read()
                        self.statuses[resp.status] += 1
                except urllib.error.HTTPError as exc:
                    self.statuses[exc.code] += 1
                except OSError as exc:
                    self.statuses[type(exc).__name__] += 1


class HealthPoller(threading.Thread):
    """``GET /health`` on every node every half second; every answer that is not 200, timed."""

    def __init__(self, urls: dict[str, str], gates: dict[str, Gate], t0: float) -> None:
        super().__init__(daemon=True)
        self.urls, self.gates, self.t0 = urls, gates, t0
        self.stop = threading.Event()
        self.checks: Counter[str] = Counter()
        self.bad: list[tuple[float, str, int | str]] = []

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for node, url in self.urls.items():
                gate = self.gates[node]
                with gate.lock:
                    if gate.stopped:
                        gate.skipped += 1
                        continue
                    status: int | str
                    try:
                        with urllib.request.urlopen(url + "/health", timeout=20) as resp:
                            resp.read()
                            status = resp.status
                    except urllib.error.HTTPError as exc:
                        status = exc.code
                    except OSError as exc:
                        status = type(exc).__name__
                    self.checks[node] += 1
                    if status != 200:
                        self.bad.append((time.monotonic() - self.t0, node, status))


class Watcher(threading.Thread):
    """Each node's served version and cohort once a second (``/v1/models``); the changes."""

    def __init__(self, model: str, urls: dict[str, str], gates: dict[str, Gate],
                 t0: float) -> None:
        super().__init__(daemon=True)
        self.model, self.urls, self.gates, self.t0 = model, urls, gates, t0
        self.now: dict[str, tuple[str, str]] = {}
        self.changes: list[tuple[float, str, str, str]] = []
        self.stop = threading.Event()
        self._polling = threading.Lock()  # the thread's polls and the simulation's

    def poll(self) -> None:
        with self._polling:
            self._poll()

    def _poll(self) -> None:
        for node, url in self.urls.items():
            gate = self.gates[node]
            with gate.lock:
                if gate.stopped:
                    continue
                try:
                    with urllib.request.urlopen(url + "/v1/models", timeout=20) as resp:
                        models = json.loads(resp.read())["models"]
                except (OSError, ValueError):
                    continue
            (m,) = [m for m in models if m["name"] == self.model]
            state = (m["version"], m.get("rollout", ""))
            if self.now.get(node) != state:
                self.now[node] = state
                self.changes.append((time.monotonic() - self.t0, node, *state))

    def run(self) -> None:
        while not self.stop.wait(1.0):
            self.poll()
