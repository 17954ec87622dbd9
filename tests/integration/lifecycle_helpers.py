"""Helpers for the model-lifecycle tests: published versions, manifests, reading state."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from agent.http import keys
from inference.bundled import BUNDLE_ROOT, read_bundle

FUSION = read_bundle(BUNDLE_ROOT / "fusion")
DEFECTS = read_bundle(BUNDLE_ROOT / "defects")
FRAMES = [f"{i:03d}" for i in range(12)]  # a dozen frames: every class, a quick score
TOKEN = "s3cret-token"


def publish(folder: Path, model: onnx.ModelProto, version: str, sha256: str | None = None) -> str:
    """A version as a publisher puts it on a share: model.onnx + model.json; its file:// URL."""
    folder.mkdir(parents=True)
    data = model.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    sidecar = {"name": "fusion", "version": version, "kind": "tensor", "file": "model.onnx",
               "sha256": sha256 or hashlib.sha256(data).hexdigest()}
    (folder / "model.json").write_text(json.dumps(sidecar))
    return (folder / "model.json").as_uri()


def fusion_model(version: str, broken: bool = False, normal_bias: float = 0.0) -> onnx.ModelProto:
    """The bundled fusion model as another version. ``broken``: confident and wrong (fails any
    gate); ``normal_bias``: a logit bias towards "normal" that loses a few golden windows
    (6.0 scores 0.93 against the bundled 0.97: over min_score 0.9, a drop of 0.04)."""
    model = onnx.load(str(FUSION.model_path))
    for prop in model.metadata_props:
        if prop.key == "version":
            prop.value = version
    if broken:  # rotate the output layer's classes: confident and wrong
        (last,) = [init for init in model.graph.initializer if init.name == "w2"]
        rotated = np.roll(numpy_helper.to_array(last), 1, axis=1)
        last.CopyFrom(numpy_helper.from_array(rotated.astype(np.float32), last.name))
    if normal_bias:
        (bias,) = [init for init in model.graph.initializer if init.name == "b2"]
        shifted = numpy_helper.to_array(bias).copy()
        shifted[0] += normal_bias
        bias.CopyFrom(numpy_helper.from_array(shifted.astype(np.float32), bias.name))
    return model


AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def models(client) -> dict:
    body = await (await client.get("/v1/models")).json()
    return {m["name"]: m for m in body["models"]}


async def summary(client) -> dict:
    return samples(await (await client.get("/metrics/summary")).text())


def samples(text: str) -> dict:
    """Prometheus text -> {(name, sorted labels): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def write_manifest(path: Path, stable: str, canary: str | None = None, percent: int = 0,
                   min_score: float = 0.9, max_drop: float = 0.02, model: str = "fusion",
                   require_golden: bool | None = None) -> None:
    entry: dict = {"stable": {"source": stable}, "min_score": min_score, "max_drop": max_drop}
    if canary:
        entry["canary"] = {"source": canary, "percent": percent}
    if require_golden is not None:
        entry["require_golden"] = require_golden
    path.write_text(json.dumps({"models": {model: entry}}))  # JSON is YAML


def pack(onnx_file: Path, golden: Path, out: Path, name: str, version: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "model", "pack", str(onnx_file), str(golden), "--out",
         str(out), "--name", name, "--version", version],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads((out / "model.json").read_text())


def cache_import(sidecar: Path, state_dir: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "cache", "import", str(sidecar), "--state-dir",
         str(state_dir)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def defects_onnx(path: Path, version: str, swap_classes: tuple[int, int] | None = None) -> Path:
    """The bundled detector as another version (its own digest); ``swap_classes``: the head's
    weights for two classes exchanged, so it calls each of them by the other's name."""
    model = onnx.load(str(DEFECTS.model_path))
    model.metadata_props.add(key="edge_version", value=version)
    if swap_classes is not None:
        a, b = swap_classes
        for init in model.graph.initializer:
            if ".cv3." in init.name and init.name.endswith((".2.weight", ".2.bias")):
                array = numpy_helper.to_array(init).copy()
                array[[a, b]] = array[[b, a]]
                init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(model, str(path))
    return path


def golden_folder(root: Path, swap_labels: tuple[int, int] | None = None,
                  frames: list[str] = FRAMES) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in frames:
        shutil.copy(DEFECTS.golden_path / f"{name}.jpg", root / "images")
        lines = (DEFECTS.golden_path / f"{name}.txt").read_text().splitlines()
        if swap_labels is not None:
            a, b = swap_labels
            swap = {str(a): str(b), str(b): str(a)}
            lines = [" ".join([swap.get(ln.split()[0], ln.split()[0]), *ln.split()[1:]])
                     for ln in lines if ln.strip()]
        (root / "labels" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


async def first_sync_done(client: Any) -> None:
    """Wait for the sync a daemon with a fleet manifest runs once its models are loaded and
    scored. A test that writes its manifest after the start waits for it first: on a busy
    machine that sync could start late enough to read the test's manifest and act on it
    before the test's own sync does."""
    syncer = client.app[keys.SYNCER]
    loop = asyncio.get_running_loop()
    end = loop.time() + 120
    while syncer.status.connected is None:
        if loop.time() > end:
            raise AssertionError("the first model sync did not finish")
        await asyncio.sleep(0.01)


def assert_follows_the_rule(choice: dict, max_drop: float) -> None:
    """What serves is the fastest measured path within ``max_drop`` of fp32's score."""
    variants = choice["variants"]
    fp32 = variants["fp32"]["score"]
    qualified = {p: v for p, v in variants.items()
                 if "error" not in v and fp32 - v["score"] <= max_drop + 1e-9}
    fastest = min(qualified, key=lambda p: (qualified[p]["median_ms"], p != "fp32", p))
    assert choice["serving"] == fastest, choice
