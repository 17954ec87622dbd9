"""The CPU image built by a real Docker engine and run as the DaemonSet runs it: read-only root
filesystem, non-root, state dir and /tmp as the only writable places.

The image and the engine that builds it are the session's (tests/integration/conftest.py): no
base image can be pulled here, so the base is Debian bookworm made with debootstrap and passed
as ``BASE_IMAGE``, the Dockerfile's documented way to pick one.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from support import free_port

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 900,
        **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


def test_the_cpu_image_runs_read_only_as_non_root_and_answers(
    docker: dict[str, str], edge_agent_image: str, tmp_path: Path
):
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 10001, 10001)  # what the DaemonSet's init container does to its hostPath
    port = free_port()
    name = f"edge-agent-test-{port}"
    run("docker", "run", "-d", "--name", name, "--network", "host", "--read-only",
        "--tmpfs", "/tmp", "-v", f"{state}:/var/lib/edge-agent", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "-e", f"EDGE_AGENT_PORT={port}",
        edge_agent_image, env=docker)
    try:
        health = ""
        end = time.monotonic() + 120
        while time.monotonic() < end and health != "healthy":
            health = run("docker", "inspect", "--format", "{{.State.Health.Status}}", name,
                         env=docker).stdout.strip()
            time.sleep(1)
        logs = run("docker", "logs", name, env=docker)
        assert health == "healthy", logs.stdout + logs.stderr
        user = run("docker", "exec", name, "id", "-u", env=docker).stdout.strip()
        assert user == "10001"
        frame = (ROOT / "inference/bundled/defects/golden/000.jpg").read_bytes()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/models/defects/detect",
                                         data=frame, headers={"Content-Type": "image/jpeg"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            body = json.loads(resp.read())
        assert body["model"] == "defects"
        assert body["detections"]
        # The root filesystem really is read-only; the state dir is writable.
        denied = subprocess.run(["docker", "exec", name, "touch", "/opt/edge-agent/x"],
                                capture_output=True, env={**os.environ, **docker})
        assert denied.returncode != 0
        run("docker", "exec", name, "touch", "/var/lib/edge-agent/ok", env=docker)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True,
                       env={**os.environ, **docker})
