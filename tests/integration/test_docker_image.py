"""The CPU image built by a real Docker engine and run as the DaemonSet runs it: read-only root
filesystem, non-root, state dir and /tmp as the only writable places.

No base image can be pulled here: the base is Debian bookworm made with debootstrap (with
python3 and this machine's CA bundle, which pip needs behind its TLS proxy) and passed as
``BASE_IMAGE``, the Dockerfile's documented way to pick one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import cache_dir, free_port, require

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parents[2]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 900,
        **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, **kw)


@pytest.fixture(scope="module")
def docker() -> Iterator[dict[str, str]]:
    for tool in ("dockerd", "docker", "debootstrap"):
        require(shutil.which(tool) is not None,
                f"{tool} (apt-get install docker.io debootstrap)")
    require(os.geteuid() == 0, "root (dockerd, debootstrap)")
    base = Path(tempfile.mkdtemp(prefix="edk"))  # short: the socket path has a length limit
    sock = base / "docker.sock"
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
         "-H", f"unix://{sock}", "--bridge=none", "--iptables=false", "--ip6tables=false",
         "--ip-masq=false", "--pidfile", str(base / "docker.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    env = {"DOCKER_HOST": f"unix://{sock}"}
    try:
        end = time.monotonic() + 60
        while subprocess.run(["docker", "version"], env={**os.environ, **env},
                             capture_output=True).returncode != 0:
            assert time.monotonic() < end, "dockerd did not start"
            time.sleep(0.5)
        yield env
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        # dockerd leaves an nsfs mount under its exec root.
        mounts = Path("/proc/mounts").read_text().splitlines()
        for line in mounts:
            target = line.split()[1]
            if target.startswith(str(base)):
                subprocess.run(["umount", "-l", target], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def base_image(docker: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    tarball = cache_dir() / "docker" / "bookworm-python3.tar"
    if not tarball.is_file():
        root = tmp_path_factory.mktemp("bookworm") / "root"
        run("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
            "bookworm", str(root))
        shutil.copy(CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        run("tar", "-C", str(root), "-cf", str(tarball), ".")
    with tarball.open("rb") as f:
        subprocess.run(["docker", "import", "--change",
                        f"ENV PIP_CERT={CA_BUNDLE}", "-", "local/bookworm-python"],
                       stdin=f, capture_output=True, check=True, env={**os.environ, **docker})
    return "local/bookworm-python"


def test_the_cpu_image_runs_read_only_as_non_root_and_answers(
    docker: dict[str, str], base_image: str, tmp_path: Path
):
    run("docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}",
        "-f", str(ROOT / "docker" / "Dockerfile"), "-t", "edge-agent:test", str(ROOT),
        env=docker)
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 10001, 10001)  # what the DaemonSet's init container does to its hostPath
    port = free_port()
    name = f"edge-agent-test-{port}"
    run("docker", "run", "-d", "--name", name, "--network", "host", "--read-only",
        "--tmpfs", "/tmp", "-v", f"{state}:/var/lib/edge-agent", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "-e", f"EDGE_AGENT_PORT={port}",
        "edge-agent:test", env=docker)
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
