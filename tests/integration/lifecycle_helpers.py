"""Helpers for the model-lifecycle tests: published versions, manifests, reading state."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from prometheus_client.parser import text_string_to_metric_families

from inference.bundled import BUNDLE_ROOT, read_bundle

FUSION = read_bundle(BUNDLE_ROOT / "fusion")
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


def fusion_model(version: str, broken: bool = False) -> onnx.ModelProto:
    model = onnx.load(str(FUSION.model_path))
    for prop in model.metadata_props:
        if prop.key == "version":
            prop.value = version
    if broken:  # rotate the output layer's classes: confident and wrong
        (last,) = [init for init in model.graph.initializer if init.name == "w2"]
        rotated = np.roll(numpy_helper.to_array(last), 1, axis=1)
        last.CopyFrom(numpy_helper.from_array(rotated.astype(np.float32), last.name))
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
                   min_score: float = 0.9) -> None:
    entry = {"stable": {"source": stable}, "min_score": min_score, "max_drop": 0.02}
    if canary:
        entry["canary"] = {"source": canary, "percent": percent}
    path.write_text(json.dumps({"models": {"fusion": entry}}))  # JSON is YAML
