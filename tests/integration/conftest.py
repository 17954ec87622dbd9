from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import TINY_MODEL

from agent.http.app import create_app
from agent.settings import load_settings


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
