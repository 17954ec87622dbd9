from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from lifecycle_helpers import FUSION, TOKEN, fusion_model, publish
from oci_registry import Registry
from support import TINY_MODEL, cache_dir, docker_engine, require

from agent.http.app import create_app
from agent.settings_loader import load_settings


def make_settings(tmp_path: Path, **overrides):
    base = {
        "state_dir": tmp_path / "state",
        "models": [{"name": "tiny", "path": str(TINY_MODEL)}],
        "runtime.intra_op_threads": 1,
    }
    base.update(overrides)
    return load_settings(environ={}, overrides=base)


@pytest.fixture
def settings_factory(tmp_path):
    return lambda **kw: make_settings(tmp_path, **kw)


@pytest.fixture
async def client_factory(aiohttp_client):
    """An in-process daemon on a real localhost port, returned once /health says ready."""

    async def make(settings):
        client = await aiohttp_client(create_app(settings))
        for _ in range(1000):
            resp = await client.get("/health")
            if resp.status == 200:
                return client
            await asyncio.sleep(0.01)
        raise AssertionError(f"not ready: {await resp.json()}")

    return make


@pytest.fixture
async def client(client_factory, settings_factory):
    return await client_factory(settings_factory())


@pytest.fixture
def versions(tmp_path) -> dict[str, str]:
    root = tmp_path / "share"
    return {
        "bundled": FUSION.folder.joinpath("model.json").as_uri(),
        "1.0.1": publish(root / "1.0.1", fusion_model("1.0.1"), "1.0.1"),
        "broken": publish(root / "broken", fusion_model("9.9.9", broken=True), "9.9.9"),
        "worse": publish(root / "worse", fusion_model("1.1.0", normal_bias=6.0), "1.1.0"),
        "wrong-digest": publish(root / "wrong", fusion_model("1.0.2"), "1.0.2", "ab" * 32),
    }


@pytest.fixture
def registry(tmp_path) -> Iterator[Registry]:
    r = Registry(tmp_path)
    yield r
    r.stop()


@pytest.fixture
def lifecycle(tmp_path, settings_factory):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    manifest = tmp_path / "fleet.yaml"

    def make(**extra):
        return settings_factory(**{
            "models": [{"name": "fusion", "bundled": "fusion"}],
            "lifecycle.manifest": str(manifest),
            "lifecycle.poll_interval_s": 3600,
            "lifecycle.watch_interval_s": 0,  # syncs only when a test asks (admin sync)
            "lifecycle.retry_attempts": 2,
            "lifecycle.retry_max_s": 0.2,
            "lifecycle.stall_timeout_s": 2,
            "lifecycle.node_name": "line1-node007",
            "admin.token_file": str(token),
            **extra,
        })

    return manifest, make


# The CPU image, built once per session by a real Docker engine (test_docker_image runs it as
# the DaemonSet does, test_airgap carries it to a clean engine). No base image can be pulled
# here: the base is Debian bookworm made with debootstrap (with python3 and this machine's CA
# bundle, which pip needs behind its TLS proxy), passed as the Dockerfile's ``BASE_IMAGE``.
ROOT = Path(__file__).resolve().parents[2]
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _run(*args: str, env: dict[str, str] | None = None, **kw) -> None:
    proc = subprocess.run(args, capture_output=True, timeout=900,
                          env={**os.environ, **(env or {})}, **kw)
    assert proc.returncode == 0, f"{args[:3]}: {proc.stderr.decode(errors='replace')[-3000:]}"


@pytest.fixture(scope="session")
def docker() -> Iterator[dict[str, str]]:
    """The build engine: ``{"DOCKER_HOST": ...}`` for a dockerd of this session's own."""
    for tool in ("dockerd", "docker", "debootstrap"):
        require(shutil.which(tool) is not None,
                f"{tool} (apt-get install docker.io debootstrap)")
    require(os.geteuid() == 0, "root (dockerd, debootstrap)")
    with docker_engine() as env:
        yield env


@pytest.fixture(scope="session")
def base_image(docker: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    tarball = cache_dir() / "docker" / "bookworm-python3.tar"
    if not tarball.is_file():
        root = tmp_path_factory.mktemp("bookworm") / "root"
        _run("debootstrap", "--variant=minbase",
             "--include=python3,python3-venv,ca-certificates", "bookworm", str(root))
        shutil.copy(CA_BUNDLE, root / "etc/ssl/certs/ca-certificates.crt")
        tarball.parent.mkdir(parents=True, exist_ok=True)
        _run("tar", "-C", str(root), "-cf", f"{tarball}.part", ".")
        os.replace(f"{tarball}.part", tarball)
    with tarball.open("rb") as f:
        _run("docker", "import", "--change", f"ENV PIP_CERT={CA_BUNDLE}", "-",
             "local/bookworm-python", stdin=f, env=docker)
    return "local/bookworm-python"


@pytest.fixture(scope="session")
def edge_agent_image(docker: dict[str, str], base_image: str) -> str:
    """``edge-agent:test``, built from docker/Dockerfile in the ``docker`` engine."""
    _run("docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}",
         "-f", str(ROOT / "docker" / "Dockerfile"), "-t", "edge-agent:test", str(ROOT),
         env=docker)
    return "edge-agent:test"


@pytest.fixture(scope="session")
def fleet_controller_image(docker: dict[str, str], base_image: str) -> str:
    """``edge-agent:fleet-test``: docker/Dockerfile with the fleet extra, as k3s/fleet runs it."""
    _run("docker", "build", "--network", "host", "--build-arg", f"BASE_IMAGE={base_image}",
         "--build-arg", "EXTRA=cpu,fleet", "--build-arg", "LOCK=fleet",
         "-f", str(ROOT / "docker" / "Dockerfile"), "-t", "edge-agent:fleet-test", str(ROOT),
         env=docker)
    return "edge-agent:fleet-test"
