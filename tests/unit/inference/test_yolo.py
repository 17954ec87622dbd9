"""Parity with Ultralytics' own predictor, through the library; batching equivalence."""

from __future__ import annotations

import numpy as np
import pytest
from support import COCO_MODEL, TINY_MODEL, assert_parity, image_bytes

from inference import SessionConfig, Thresholds, YoloV8Detector
from inference.errors import ModelLoadError
from inference.letterbox import to_input
from inference.yolo import InvalidThresholdError


@pytest.fixture(scope="module")
def detectors(model_paths):
    cfg = SessionConfig(intra_op_threads=2)
    return {key: YoloV8Detector.load(path, cfg) for key, path in model_paths.items()}


def test_fixture_files_are_the_ones_the_reference_was_made_from(reference, model_paths):
    from support import _sha256

    for key, info in reference["models"].items():
        assert _sha256(model_paths[key]) == info["sha256"], key


def test_parity_with_ultralytics(reference, detectors):
    assert len(reference["cases"]) >= 15
    for case in reference["cases"]:
        det = detectors[case["model"]]
        got = det.detect(
            image_bytes(case["image"]), Thresholds(case["conf"], case["iou"], case["max_det"])
        )
        assert_parity(
            case["detections"],
            [d.as_dict() for d in got],
            f"{case['model']} on {case['image']} at conf {case['conf']}",
        )


def test_class_names_come_from_the_onnx_metadata(detectors):
    assert detectors["fall"].names == {0: "Normal", 1: "Fall"}
    assert detectors["yolov8t-3cls-dynbatch"].names == {0: "scratch", 1: "dent", 2: "hole"}
    assert len(detectors["yolov8n-coco-random"].names) == 80


def test_declared_input_size_and_batch_axis(detectors):
    tiny = detectors["yolov8t-3cls-dynbatch"]
    assert (tiny.spec.input_h, tiny.spec.input_w, tiny.max_batch) == (320, 416, None)
    assert detectors["fall"].max_batch == 1


@pytest.mark.parametrize("model", [TINY_MODEL, COCO_MODEL])
def test_a_batch_gives_what_single_runs_give(model):
    det = YoloV8Detector.load(model, SessionConfig(intra_op_threads=1))
    names = ["coffee-600x400.jpg", "camera-gray.png", "chelsea-rgba.png"]
    prepared = [det.preprocess(image_bytes(n)) for n in names]
    batched = det.infer([p.blob for p in prepared])
    assert len(batched) == 3
    for p, out in zip(prepared, batched, strict=True):
        single = det.infer([p.blob])[0]
        np.testing.assert_allclose(out, single, rtol=1e-4, atol=1e-5)


def test_accepts_a_decoded_array_and_a_gray_array(detectors):
    det = detectors["yolov8t-3cls-dynbatch"]
    gray = np.full((100, 150), 80, np.uint8)
    out = det.detect(gray, Thresholds(conf=0.0001))
    assert all(0 <= d.box[0] <= d.box[2] <= 150 for d in out)


def test_thresholds_are_validated():
    with pytest.raises(InvalidThresholdError):
        Thresholds(conf=1.5)
    with pytest.raises(InvalidThresholdError):
        Thresholds(max_det=0)


def test_a_classifier_is_not_a_detector(tmp_path):
    onnx = pytest.importorskip("onnx")  # only to build a wrong-shaped model
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
    )
    path = tmp_path / "clf.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime we support
    onnx.save(model, path)
    with pytest.raises(ModelLoadError):
        YoloV8Detector.load(path)


def test_fixed_batch_pads_every_run_to_one_shape_and_keeps_the_answers():
    det = YoloV8Detector.load(TINY_MODEL, SessionConfig(providers=("cpu",), intra_op_threads=1))
    blobs = [det.preprocess(image_bytes(n)).blob for n in
             ("astronaut-1080p.jpg", "coffee-600x400.jpg", "camera-gray.png")]
    plain = det.infer(blobs)
    shapes: list[tuple[int, ...]] = []
    run = det._run
    det._run = lambda batch: (shapes.append(batch.shape), run(batch))[1]  # type: ignore[method-assign]
    assert det.fix_batch(4)
    padded = det.infer(blobs) + det.infer(blobs[:1])
    assert {s[0] for s in shapes} == {4}  # the session only ever sees batches of 4
    for got, want in zip(padded, [*plain, plain[0]], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    static = YoloV8Detector.load(COCO_MODEL, SessionConfig(providers=("cpu",)))
    assert not static.fix_batch(4)  # a static batch axis already fixes the shape


def test_a_batch_of_planes_and_float_input_mixed_gives_the_same_answers():
    det = YoloV8Detector.load(TINY_MODEL, SessionConfig(providers=("cpu",), intra_op_threads=1))
    names = ("astronaut-1080p.jpg", "coffee-600x400.jpg")
    planes = [det.preprocess(image_bytes(n)).blob for n in names]
    assert all(p.dtype == np.uint8 for p in planes)  # a quarter of float32's memory in the queue
    mixed = det.infer([planes[0], to_input(planes[1])])
    for got, want in zip(mixed, det.infer(planes), strict=True):
        np.testing.assert_array_equal(got, want)
