"""A daemon with no configuration serves the bundled models, at their recorded accuracy.

The golden sets go through the daemon's HTTP API and are scored with the project's own
evaluation code (``inference.evaluation``); the scores must reach the targets and equal what
the sidecars (and README) record.
"""

from __future__ import annotations

import json

import aiohttp
import numpy as np
from support import Daemon

from inference.bundled import BUNDLE_ROOT, bundled_models, read_bundle
from inference.evaluation import ScoredBox
from inference.golden import load_detection_golden, load_tensor_golden, score_detections

DEFECTS = read_bundle(BUNDLE_ROOT / "defects")
FUSION = read_bundle(BUNDLE_ROOT / "fusion")


async def test_no_configuration_serves_both_bundled_models(default_daemon: Daemon):
    async with (
        aiohttp.ClientSession() as http,
        http.get(default_daemon.url + "/v1/models") as resp,
    ):
        models = {m["name"]: m for m in (await resp.json())["models"]}
    assert sorted(models) == ["defects", "fusion"]
    for bundle in bundled_models():
        m = models[bundle.name]
        assert m["state"] == "ready"
        assert m["source"] == "bundled"
        assert m["kind"] == bundle.kind
        assert m["version"] == bundle.version
        assert m["digest"] == f"sha256:{bundle.sha256}"
    assert models["defects"]["classes"] == ["scratch", "dent", "hole", "stain"]
    # A clean start logs no error (a bundled model has no path to find).
    errors = [line for line in default_daemon.output.splitlines() if '"level": "error"' in line]
    assert errors == []


async def test_defects_golden_map50_through_http(default_daemon: Daemon):
    frames = load_detection_golden(DEFECTS.golden_path)
    assert len(frames) == 50
    scoring = DEFECTS.sidecar["golden"]["scoring"]
    url = (f"{default_daemon.url}/v1/models/defects/detect"
           f"?conf={scoring['conf']}&iou={scoring['iou']}")
    answers: dict[bytes, list[ScoredBox]] = {}
    async with aiohttp.ClientSession() as http:
        for f in frames:
            async with http.post(url, data=f.data, headers={"Content-Type": "image/jpeg"}) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
            answers[f.data] = [
                ScoredBox(d["class_id"], d["score"], tuple(d["box"])) for d in body["detections"]
            ]
    score = score_detections(frames, answers.__getitem__)
    assert score.map >= 0.8, score
    assert abs(score.map - DEFECTS.golden_score) < 1e-3, (score.map, DEFECTS.golden_score)


async def test_fusion_golden_accuracy_through_http(default_daemon: Daemon):
    golden = load_tensor_golden(
        FUSION.golden_path, {"sensors": np.dtype(np.float32), "defect_rate": np.dtype(np.float32)}
    )
    predicted: list[np.ndarray] = []
    async with aiohttp.ClientSession() as http:
        for start in range(0, len(golden.labels), 64):  # 64 windows a request, binary tensors
            sensors = golden.inputs["sensors"][start : start + 64]
            rate = golden.inputs["defect_rate"][start : start + 64]
            header = json.dumps({
                "inputs": [
                    {"name": "sensors", "datatype": "FP32", "shape": list(sensors.shape),
                     "parameters": {"binary_data_size": sensors.nbytes}},
                    {"name": "defect_rate", "datatype": "FP32", "shape": list(rate.shape),
                     "parameters": {"binary_data_size": rate.nbytes}},
                ],
                "outputs": [{"name": "state_probs"}],
            }).encode()
            async with http.post(
                default_daemon.url + "/v2/models/fusion/infer",
                data=header + sensors.tobytes() + rate.tobytes(),
                headers={"Inference-Header-Content-Length": str(len(header))},
            ) as r:
                assert r.status == 200, await r.text()
                (out,) = (await r.json())["outputs"]
            probs = np.array(out["data"], np.float32).reshape(out["shape"])
            predicted.append(probs.argmax(axis=1))
    accuracy = float((np.concatenate(predicted) == golden.labels).mean())
    assert accuracy >= 0.9
    assert abs(accuracy - FUSION.golden_score) < 1e-9, (accuracy, FUSION.golden_score)
