from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import inference
from training import fusion, sensors

BUNDLED = Path(inference.__file__).parent / "bundled" / "fusion"


def _session(model: bytes | str) -> ort.InferenceSession:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def sidecar() -> dict:
    return json.loads((BUNDLED / "model.json").read_text())


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(BUNDLED / "golden.npz", allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


@pytest.fixture(scope="module")
def golden_outputs(golden) -> dict[str, np.ndarray]:
    session = _session(str(BUNDLED / "model.onnx"))
    feed = {
        "sensors": golden["sensors"].astype(np.float32),  # stored as float16
        "defect_rate": golden["defect_rate"],
    }
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def test_numpy_features_equal_the_onnx_graph_features():
    batch = sensors.generate(60, seed=5)
    window = np.concatenate([batch.window, np.zeros((1, 256, 6), np.float32)])  # dead sensor
    rate = np.concatenate([batch.defect_rate, np.zeros((1, 1), np.float32)])
    expected = fusion.features(window, rate)
    (got,) = _session(fusion.features_model().SerializeToString()).run(
        ["features"], {"sensors": window, "defect_rate": rate}
    )
    assert expected.shape == got.shape == (61, len(fusion.FEATURES))
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_band_features_read_a_sine_amplitude():
    # A 0.2 g sine on the 24 Hz bin lands in the 15-35 Hz band of its own axis only.
    t = np.arange(256) / 1024
    window = np.zeros((1, 256, 6), np.float32)
    window[0, :, 1] = 0.2 * np.sin(2 * np.pi * 24 * t)
    feats = dict(zip(fusion.FEATURES, fusion.features(window, np.zeros((1, 1)))[0], strict=True))
    band_bins = 5  # 16, 20, 24, 28, 32 Hz: the sine plus its Hann-window neighbours
    assert np.exp(feats["log_band_y_15_35hz"]) == pytest.approx(0.2 * 2 / band_bins, rel=1e-3)
    assert feats["log_band_y_15_35hz"] > feats["log_band_y_200_450hz"] + 5
    assert feats["log_band_x_15_35hz"] < -13  # log(eps): nothing on x
    assert np.exp(feats["log_rms_y"]) == pytest.approx(0.2 / np.sqrt(2), rel=1e-4)


def test_shipped_model_matches_its_sidecar(sidecar):
    data = (BUNDLED / "model.onnx").read_bytes()
    assert sidecar["sha256"] == hashlib.sha256(data).hexdigest()
    assert sidecar["size_bytes"] == len(data) < 1_000_000
    assert sidecar["name"] == "fusion"
    assert sidecar["kind"] == "tensor"
    assert sidecar["file"] == "model.onnx"
    assert sidecar["labels"] == list(sensors.STATES)
    assert sidecar["inputs"]["sensors"] == {
        "channels": list(sensors.CHANNELS),
        "sample_rate_hz": 1024,
    }
    assert sidecar["golden"]["seed"] != sidecar["training"]["seed"]
    assert sidecar["anomaly"]["threshold"] == 1.0


def test_shipped_model_declares_its_interface(sidecar):
    model = onnx.load(str(BUNDLED / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.ir_version <= 11
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["labels"]) == list(sensors.STATES)
    assert json.loads(meta["channels"]) == list(sensors.CHANNELS)
    assert meta["sample_rate_hz"] == "1024"
    assert meta["version"] == sidecar["version"] == "1.0.0"
    assert meta["description"]

    session = _session(str(BUNDLED / "model.onnx"))
    inputs = {i.name: (i.type, i.shape) for i in session.get_inputs()}
    outputs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    assert inputs == {
        "sensors": ("tensor(float)", ["batch", 256, 6]),
        "defect_rate": ("tensor(float)", ["batch", 1]),
    }
    assert outputs == {
        "state_probs": ("tensor(float)", ["batch", 5]),
        "anomaly_score": ("tensor(float)", ["batch", 1]),
    }


def test_shipped_model_accuracy_on_golden_is_the_recorded_one(sidecar, golden, golden_outputs):
    assert golden["sensors"].shape == (sidecar["golden"]["samples"], 256, 6)
    assert golden["sensors"].dtype == np.float16
    pred = golden_outputs["state_probs"].argmax(axis=1)
    accuracy = float((pred == golden["label"]).mean())
    assert accuracy >= 0.9
    assert accuracy == pytest.approx(sidecar["golden"]["score"], abs=1e-9)
    # Every state is in the golden set and mostly recognised.
    for i in range(len(sensors.STATES)):
        assert (pred[golden["label"] == i] == i).mean() >= 0.8


def test_probabilities_sum_to_one(golden_outputs):
    probs = golden_outputs["state_probs"]
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_anomaly_score_separates_normal_from_faulty(sidecar, golden, golden_outputs):
    score = golden_outputs["anomaly_score"][:, 0]
    normal = golden["label"] == sensors.STATES.index("normal")
    assert score[normal].mean() < 1.0 < score[~normal].mean()
    assert (score[normal] < 1.0).mean() >= 0.95
    below = sidecar["anomaly"]["normal_below_threshold"]
    assert float((score[normal] < 1.0).mean()) == pytest.approx(below, abs=1e-9)
    above = sidecar["anomaly"]["faulty_above_threshold"]
    assert float((score[~normal] > 1.0).mean()) == pytest.approx(above, abs=1e-9)


def test_training_script_end_to_end(tmp_path):
    args = ["--train-size", "600", "--golden-size", "50", "--epochs", "5", "--seed", "3"]
    first = fusion.main(["--out", str(tmp_path / "a"), *args])
    second = fusion.main(["--out", str(tmp_path / "b"), *args])
    for name in ("model.onnx", "golden.npz", "model.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert first == second
    assert first["training"]["train_size"] == 600
    assert first["golden"]["samples"] == 50
    assert first["golden"]["score"] > 0.7  # five epochs on 600 samples: a rough model
    data = (tmp_path / "a" / "model.onnx").read_bytes()
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    assert json.loads((tmp_path / "a" / "model.json").read_text()) == first
    assert not [p.name for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]
