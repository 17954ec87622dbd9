"""Bundle a trained detector: the ONNX, its golden set, its measured mAP50 and its sidecar."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import onnx

from inference.evaluation import ScoredBox
from inference.files import atomic_write
from inference.golden import load_detection_golden, score_detections
from inference.yolo import Thresholds, YoloV8Detector
from training.conveyor import CLASSES, FRAME_SIZE, encode_jpeg, frame

GOLDEN_FRAMES = 50
GOLDEN_QUALITY = 80
# Scoring thresholds: a low conf so the whole precision/recall curve counts (as mAP tools do).
SCORE_THRESHOLDS = Thresholds(conf=0.001, iou=0.7, max_det=300)
# Newest IR that onnxruntime 1.23 (the last for Python 3.10, JetPack 6) loads.
MAX_IR_VERSION = 10


def portable_onnx(source: Path) -> bytes:
    """The model with its IR version lowered where the exporter wrote a newer one."""
    model = onnx.load(str(source))
    if model.ir_version > MAX_IR_VERSION:
        model.ir_version = MAX_IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def write_golden(folder: Path, seed: int) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    for index in range(GOLDEN_FRAMES):
        item = frame(seed, index, FRAME_SIZE)
        atomic_write(folder / f"{index:03d}.jpg", encode_jpeg(item.image, GOLDEN_QUALITY))
        atomic_write(folder / f"{index:03d}.txt", item.yolo_labels().encode())


def package_defects(
    onnx_path: Path, out: Path, config: dict[str, Any], golden_seed: int, train_seconds: float
) -> dict[str, Any]:
    model_bytes = portable_onnx(onnx_path)
    model_file = out / "model.onnx"
    atomic_write(model_file, model_bytes)
    write_golden(out / "golden", golden_seed)

    detector = YoloV8Detector.load(model_file)

    def detect(data: bytes) -> list[ScoredBox]:
        return [
            ScoredBox(d.class_id, d.score, d.box)
            for d in detector.detect(data, SCORE_THRESHOLDS)
        ]

    score = score_detections(load_detection_golden(out / "golden"), detect)
    sidecar = {
        "name": "defects",
        "version": "1.0.0",
        "kind": "yolov8",
        "file": model_file.name,
        "sha256": hashlib.sha256(model_bytes).hexdigest(),
        "size_bytes": len(model_bytes),
        "labels": list(CLASSES),
        "imgsz": [config["imgsz"], config["imgsz"]],
        "thresholds": {"conf": 0.25, "iou": 0.7},
        "golden": {
            "file": "golden",
            "frames": GOLDEN_FRAMES,
            "seed": golden_seed,
            "metric": "mAP50",
            "score": round(score.map, 4),
            "per_class": {CLASSES[c]: round(ap, 4) for c, ap in score.per_class.items()},
            "scoring": {"conf": SCORE_THRESHOLDS.conf, "iou": SCORE_THRESHOLDS.iou},
        },
        "training": {
            **config,
            "generator": "training.conveyor",
            "seconds": round(train_seconds),
        },
    }
    atomic_write(out / "model.json", (json.dumps(sidecar, indent=2) + "\n").encode())
    print(json.dumps(sidecar["golden"], indent=2))
    return sidecar


def add_int8_variant(out: Path) -> dict[str, Any]:
    """Quantise the bundled detector in ``out`` to ``model.int8.onnx`` (static int8, QDQ,
    calibrated on its golden frames as the daemon serves them), score it like the fp32 file and
    list both in the sidecar's ``variants``. Needs the ``pack`` extra (onnx, sympy)."""
    from inference.quantize import detector_inputs, quantize_int8

    sidecar = json.loads((out / "model.json").read_text())
    golden = out / str(sidecar["golden"]["file"])
    model_file, int8_file = out / str(sidecar["file"]), out / "model.int8.onnx"
    count = quantize_int8(model_file, int8_file, detector_inputs(YoloV8Detector.load(model_file),
                                                                 golden))
    detector = YoloV8Detector.load(int8_file)

    def detect(data: bytes) -> list[ScoredBox]:
        return [
            ScoredBox(d.class_id, d.score, d.box)
            for d in detector.detect(data, SCORE_THRESHOLDS)
        ]

    score = score_detections(load_detection_golden(golden), detect)
    data = int8_file.read_bytes()
    sidecar["variants"] = [
        {"precision": "fp32", "file": sidecar["file"], "sha256": sidecar["sha256"],
         "score": sidecar["golden"]["score"]},
        {"precision": "int8", "file": int8_file.name, "sha256": hashlib.sha256(data).hexdigest(),
         "size_bytes": len(data), "score": round(score.map, 4), "calibration_inputs": count},
    ]
    atomic_write(out / "model.json", (json.dumps(sidecar, indent=2) + "\n").encode())
    print(json.dumps(sidecar["variants"], indent=2))
    return sidecar
