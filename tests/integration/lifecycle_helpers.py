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
