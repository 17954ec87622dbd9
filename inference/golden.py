"""Golden sets: held-out labelled samples that score a model on the node itself.

A detection golden set is a folder of ``NAME.jpg`` frames with YOLO-format ``NAME.txt`` labels;
a tensor golden set is an ``.npz`` of the model's inputs plus a ``label`` array. Scoring takes a
callable, so the same code scores a model in-process or through the daemon's HTTP API.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.evaluation import (
    DetectionScore,
    LabelledBox,
    ScoredBox,
    accuracy,
    mean_average_precision,
    read_yolo_labels,
)
from inference.image import read_header


@dataclass(frozen=True)
class GoldenFrame:
    name: str
    data: bytes  # the encoded image, as a camera would send it
    truths: tuple[LabelledBox, ...]


def load_detection_golden(folder: Path) -> list[GoldenFrame]:
    frames: list[GoldenFrame] = []
    for image in sorted(folder.glob("*.jpg")):
        data = image.read_bytes()
        header = read_header(data)
        labels = image.with_suffix(".txt").read_text()
        truths = read_yolo_labels(labels, header.width, header.height)
        frames.append(GoldenFrame(image.stem, data, tuple(truths)))
    if not frames:
        raise FileNotFoundError(f"no golden frames (*.jpg) in {folder}")
    return frames


def score_detections(
    frames: list[GoldenFrame], detect: Callable[[bytes], list[ScoredBox]], iou: float = 0.5
) -> DetectionScore:
    """mAP at ``iou`` of ``detect`` (frame bytes -> boxes in pixels) on the golden frames."""
    predictions = [detect(f.data) for f in frames]
    return mean_average_precision([f.truths for f in frames], predictions, iou)


@dataclass(frozen=True)
class TensorGolden:
    inputs: dict[str, np.ndarray]
    labels: np.ndarray


def load_tensor_golden(path: Path, input_dtypes: dict[str, np.dtype]) -> TensorGolden:
    """The inputs, cast to the model's dtypes (a golden set may store FP16 to stay small)."""
    with np.load(path) as data:
        inputs = {name: data[name].astype(dtype) for name, dtype in input_dtypes.items()}
        labels = data["label"].copy()
    return TensorGolden(inputs, labels)


def score_classifier(
    golden: TensorGolden, predict: Callable[[dict[str, np.ndarray]], np.ndarray]
) -> float:
    """Accuracy of ``predict`` (inputs -> class ids) on the golden set."""
    return accuracy(golden.labels, predict(golden.inputs))
