"""NVIDIA's own client, ``tritonclient.http``, used as its users use it, against the daemon."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from support import Daemon
from tritonclient.utils import InferenceServerException

from inference.bundled import BUNDLE_ROOT, read_bundle
from inference.golden import load_tensor_golden

FUSION = read_bundle(BUNDLE_ROOT / "fusion")


@pytest.fixture(scope="module")
def client(default_daemon: Daemon) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(default_daemon.url.removeprefix("http://"))


@pytest.fixture(scope="module")
def golden():
    return load_tensor_golden(
        FUSION.golden_path, {"sensors": np.dtype(np.float32), "defect_rate": np.dtype(np.float32)}
    )


def inputs(golden, rows: slice, binary: bool) -> list[httpclient.InferInput]:
    sensors = golden.inputs["sensors"][rows]
    rate = golden.inputs["defect_rate"][rows]
    a = httpclient.InferInput("sensors", list(sensors.shape), "FP32")
    a.set_data_from_numpy(sensors, binary_data=binary)
    b = httpclient.InferInput("defect_rate", list(rate.shape), "FP32")
    b.set_data_from_numpy(rate, binary_data=binary)
    return [a, b]


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("fusion")
    assert client.is_model_ready("fusion", "1.0.0")
    assert not client.is_model_ready("fusion", "0.0.1")
    meta = client.get_model_metadata("fusion")
    assert [i["name"] for i in meta["inputs"]] == ["sensors", "defect_rate"]
    assert [o["name"] for o in meta["outputs"]] == ["state_probs", "anomaly_score"]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


def test_binary_infer_with_default_outputs_classifies_the_golden_windows(client, golden):
    rows = slice(0, 40)
    result = client.infer("fusion", inputs(golden, rows, binary=True))
    probs = result.as_numpy("state_probs")
    scores = result.as_numpy("anomaly_score")
    assert probs.shape == (40, 5)
    assert probs.dtype == np.float32
    assert scores.shape == (40, 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (probs.argmax(axis=1) == golden.labels[rows]).mean() >= 0.9
    assert result.get_response()["model_name"] == "fusion"


def test_json_inputs_and_outputs_give_the_same_answer(client, golden):
    rows = slice(40, 45)
    binary = client.infer("fusion", inputs(golden, rows, binary=True)).as_numpy("state_probs")
    wanted = [httpclient.InferRequestedOutput("state_probs", binary_data=False)]
    result = client.infer("fusion", inputs(golden, rows, binary=False), outputs=wanted)
    np.testing.assert_array_equal(result.as_numpy("state_probs"), binary)
    assert result.as_numpy("anomaly_score") is None  # not requested


def test_a_wrong_shape_is_a_clear_error_in_the_client(client, golden):
    sensors = golden.inputs["sensors"][:1, :128]
    a = httpclient.InferInput("sensors", list(sensors.shape), "FP32")
    a.set_data_from_numpy(sensors)
    b = httpclient.InferInput("defect_rate", [1, 1], "FP32")
    b.set_data_from_numpy(golden.inputs["defect_rate"][:1])
    with pytest.raises(InferenceServerException, match=r"has shape \[1, 128, 6\]"):
        client.infer("fusion", [a, b])
    with pytest.raises(InferenceServerException, match="no model named"):
        client.infer("missing", inputs(golden, slice(0, 1), binary=True))
