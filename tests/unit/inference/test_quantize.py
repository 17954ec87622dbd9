"""The quantizer's pre-processing with real ONNX Runtime tools (the full ``pack --int8`` runs in
tests/integration/test_precision_variants.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inference.quantize import QuantizeError, _pre_process, quantize_int8

TINY = Path(__file__).resolve().parents[2] / "fixtures" / "models" / \
    "yolov8t-3cls-dynbatch-320x416.onnx"


def test_a_failed_symbolic_pass_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """ORT's symbolic shape inference, when it cannot finish (here: asked not to merge the
    dynamic batch symbols), saves its partial model and weights into the working directory.
    The fallback still prepares the model, and the user's directory stays as it was."""
    from onnxruntime.quantization import quant_pre_process

    def without_merge(model: str, out: str, auto_merge: bool = False,
                      skip_symbolic_shape: bool = False) -> None:
        quant_pre_process(model, out, skip_symbolic_shape=skip_symbolic_shape)

    user = tmp_path / "user"
    user.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(user)
    _pre_process(without_merge, TINY, work / "prepared.onnx")
    assert (work / "prepared.onnx").stat().st_size > 0
    assert list(user.iterdir()) == []
    assert Path.cwd() == user
    assert os.getcwd() == str(user)


def test_no_calibration_input_is_a_clear_error(tmp_path):
    with pytest.raises(QuantizeError, match="no calibration input"):
        quantize_int8(TINY, tmp_path / "x.onnx", iter([]))
    assert not (tmp_path / "x.onnx").exists()


def test_calibration_inputs_are_the_served_inputs_plus_the_extra_folder(tmp_path):
    """A detector calibrates on each golden frame (and each extra frame) letterboxed and scaled
    as a request's is: the exact array the daemon's run feeds the session."""
    import numpy as np

    from inference.bundled import BUNDLE_ROOT, read_bundle
    from inference.golden import load_detection_golden
    from inference.letterbox import to_input
    from inference.quantize import detector_inputs, tensor_inputs
    from inference.tensor import TensorModel
    from inference.yolo import YoloV8Detector

    defects = read_bundle(BUNDLE_ROOT / "defects")
    detector = YoloV8Detector.load(defects.model_path)
    extra = tmp_path / "extra"
    extra.mkdir()
    images = Path(__file__).resolve().parents[2] / "fixtures" / "images"
    for name in ("coffee-600x400.jpg", "camera-gray.png"):
        (extra / name).write_bytes((images / name).read_bytes())
    (extra / "notes.txt").write_text("not a frame")
    inputs = list(detector_inputs(detector, defects.golden_path, extra))
    frames = load_detection_golden(defects.golden_path)
    assert len(inputs) == len(frames) + 2
    first = inputs[0][detector.spec.input_name]
    assert first.dtype == np.float32
    assert first.shape == (1, 3, 320, 320)
    np.testing.assert_array_equal(first, to_input(detector.preprocess(frames[0].data).blob))
    assert float(first.min()) >= 0.0
    assert float(first.max()) <= 1.0

    fusion = read_bundle(BUNDLE_ROOT / "fusion")
    model = TensorModel.load(fusion.model_path)
    with np.load(fusion.golden_path) as data:
        np.savez(extra / "more.npz", **{s.name: data[s.name][:5] for s in model.inputs})
    rows = list(tensor_inputs(model, fusion.golden_path, extra))
    with np.load(fusion.golden_path) as data:
        golden_rows = len(data[model.inputs[0].name])
    assert len(rows) == golden_rows + 5
    assert all(r[s.name].shape[0] == 1 for r in rows[:3] for s in model.inputs)
    (extra / "bad.npz").write_bytes(b"PK\x03\x04 a truncated zip")
    with pytest.raises(QuantizeError, match="calibration file"):
        list(tensor_inputs(model, fusion.golden_path, extra))
