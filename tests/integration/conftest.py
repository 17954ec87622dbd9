from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lifecycle_helpers import FUSION, TOKEN, fusion_model, publish
from support import TINY_MODEL

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
