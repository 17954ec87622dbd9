"""The Open Inference Protocol endpoints on a real port, with raw JSON and binary bodies."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from agent.http.app import create_app
from inference.bundled import BUNDLE_ROOT, read_bundle
from inference.golden import load_tensor_golden

FUSION = read_bundle(BUNDLE_ROOT / "fusion")


@pytest.fixture
async def v2(client_factory, settings_factory):
    return await client_factory(
        settings_factory(
            models=[
                {"name": "fusion", "bundled": "fusion"},
                {"name": "tiny", "path": str(BUNDLE_ROOT.parents[1] / "tests" / "fixtures"
                                             / "models" / "yolov8t-3cls-dynbatch-320x416.onnx")},
            ]
        )
    )


def window(rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    golden = load_tensor_golden(FUSION.golden_path, {"sensors": np.float32,
                                                      "defect_rate": np.float32})
    return golden.inputs["sensors"][seed : seed + rows], golden.inputs["defect_rate"][
        seed : seed + rows
    ]


def json_request(sensors: np.ndarray, rate: np.ndarray, **extra) -> dict:
    return {
        "inputs": [
            {"name": "sensors", "datatype": "FP32", "shape": list(sensors.shape),
             "data": sensors.ravel().tolist()},
            {"name": "defect_rate", "datatype": "FP32", "shape": list(rate.shape),
             "data": rate.ravel().tolist()},
        ],
        **extra,
    }


async def test_json_infer_returns_probabilities_and_anomaly_scores(v2):
    sensors, rate = window(3)
    resp = await v2.post("/v2/models/fusion/infer", json=json_request(sensors, rate, id="abc"))
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["model_name"] == "fusion"
    assert body["model_version"] == "1.0.0"
    assert body["id"] == "abc"
    probs, score = body["outputs"]
    assert probs["name"] == "state_probs"
    assert probs["shape"] == [3, 5]
    assert probs["datatype"] == "FP32"
    p = np.array(probs["data"]).reshape(3, 5)
    np.testing.assert_allclose(p.sum(axis=1), 1, atol=1e-5)
    assert score["name"] == "anomaly_score"
    assert score["shape"] == [3, 1]
    assert set(body["parameters"]) >= {"queue_ms", "inference_ms", "total_ms"}


async def test_binary_request_and_response_match_the_json_answer(v2):
    sensors, rate = window(2, seed=10)
    header = json.dumps({
        "inputs": [
            {"name": "sensors", "datatype": "FP32", "shape": [2, 256, 6],
             "parameters": {"binary_data_size": sensors.nbytes}},
            {"name": "defect_rate", "datatype": "FP32", "shape": [2, 1],
             "parameters": {"binary_data_size": rate.nbytes}},
        ],
        "outputs": [{"name": "state_probs", "parameters": {"binary_data": True}}],
    }).encode()
    resp = await v2.post(
        "/v2/models/fusion/infer",
        data=header + sensors.tobytes() + rate.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header)),
                 "Content-Type": "application/octet-stream"},
    )
    assert resp.status == 200, await resp.text()
    length = int(resp.headers["Inference-Header-Content-Length"])
    raw = await resp.read()
    doc = json.loads(raw[:length])
    (out,) = doc["outputs"]
    assert out["parameters"]["binary_data_size"] == 2 * 5 * 4
    binary = np.frombuffer(raw[length:], "<f4").reshape(out["shape"])
    resp = await v2.post("/v2/models/fusion/infer", json=json_request(sensors, rate))
    as_json = np.array((await resp.json())["outputs"][0]["data"], np.float32).reshape(2, 5)
    np.testing.assert_array_equal(binary, as_json)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["inputs"].pop(), "do not match"),
        (lambda d: d["inputs"][0].update(name="vibration"), "do not match"),
        (lambda d: d["inputs"][0].update(datatype="FP64"), "must be FP32"),
        (lambda d: d["inputs"][1].update(shape=[1, 2], data=[0.1, 0.2]), "has shape [1, 2]"),
        (lambda d: d["inputs"][0].update(shape=[1, 255, 6]), "needs 1530"),
        (lambda d: d.update(outputs=[{"name": "nope"}]), "no output 'nope'"),
    ],
)
async def test_tensors_that_do_not_fit_the_model_are_400_with_a_clear_message(
    v2, mutate, message
):
    sensors, rate = window(1)
    doc = json_request(sensors, rate)
    mutate(doc)
    resp = await v2.post("/v2/models/fusion/infer", json=doc)
    assert resp.status == 400
    body = await resp.json()
    assert message in body["error"], body


async def test_wrong_endpoint_for_the_kind_unknown_model_and_version(v2):
    resp = await v2.post("/v1/models/fusion/detect", data=b"\xff\xd8",
                         headers={"Content-Type": "image/jpeg"})
    assert resp.status == 400
    assert "/v2/models/fusion/infer" in (await resp.json())["error"]
    resp = await v2.post("/v2/models/tiny/infer", json={"inputs": []})
    assert resp.status == 400
    assert "/v1/models/tiny/detect" in (await resp.json())["error"]
    resp = await v2.post("/v2/models/nope/infer", json={"inputs": []})
    assert resp.status == 404
    resp = await v2.post("/v2/models/fusion/versions/9.9/infer", json={"inputs": []})
    assert resp.status == 404
    resp = await v2.post("/v2/models/fusion/infer", data=b"{not json")
    assert resp.status == 400
    assert (await v2.get("/health")).status == 200  # none of it hurt the daemon


async def test_metadata_and_readiness(v2):
    resp = await v2.get("/v2/models/fusion")
    meta = await resp.json()
    assert meta["name"] == "fusion"
    assert meta["versions"] == ["1.0.0"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "sensors", "datatype": "FP32", "shape": [-1, 256, 6]}
    assert meta["parameters"]["labels"][0] == "normal"
    tiny = await (await v2.get("/v2/models/tiny")).json()
    assert tiny["inputs"][0]["name"] == "images"
    assert tiny["parameters"]["kind"] == "yolov8"
    resp = await v2.get("/v2/models/fusion/versions/1.0.0/ready")
    assert resp.status == 200
    assert (await resp.json())["ready"] is True
    assert (await v2.get("/v2/models/fusion/ready")).status == 200
    assert (await v2.get("/v2/models/other/ready")).status == 404
    server = await (await v2.get("/v2")).json()
    assert "binary_tensor_data" in server["extensions"]
    models = {m["name"]: m for m in (await (await v2.get("/v1/models")).json())["models"]}
    assert models["fusion"]["source"] == "bundled"
    assert models["fusion"]["kind"] == "tensor"
    assert models["fusion"]["digest"] == f"sha256:{FUSION.sha256}"
    assert models["tiny"]["source"] == "file"


async def test_the_readme_sample_request_is_a_golden_window_and_is_classified(v2):
    doc = json.loads((FUSION.folder / "sample-request.json").read_text())
    row = int(doc["id"].removeprefix("golden-"))
    sensors, _ = window(1, seed=row)
    np.testing.assert_array_equal(np.array(doc["inputs"][0]["data"], np.float32), sensors)
    resp = await v2.post("/v2/models/fusion/infer", json=doc)
    assert resp.status == 200
    probs = (await resp.json())["outputs"][0]["data"]
    golden = load_tensor_golden(FUSION.golden_path, {"sensors": np.float32,
                                                      "defect_rate": np.float32})
    assert FUSION.sidecar["labels"][int(np.argmax(probs))] == "bearing_wear"
    assert golden.labels[row] == FUSION.sidecar["labels"].index("bearing_wear")


async def test_a_model_file_that_does_not_match_its_sha256_is_failed_not_served(
    aiohttp_client, settings_factory, tmp_path
):
    copy = tmp_path / "fusion.onnx"
    copy.write_bytes(FUSION.model_path.read_bytes()[:-1] + b"\0")  # one byte of bit rot
    settings = settings_factory(
        models=[{"name": "fusion", "path": str(copy), "kind": "tensor", "sha256": FUSION.sha256}]
    )
    client = await aiohttp_client(create_app(settings))
    for _ in range(500):
        body = await (await client.get("/health")).json()
        if body.get("errors"):
            break
        await asyncio.sleep(0.01)
    assert "corrupt" in body["errors"]["fusion"]
    assert (await client.get("/v2/models/fusion/ready")).status == 503
    resp = await client.post("/v2/models/fusion/infer", json={"inputs": []})
    assert resp.status == 503
