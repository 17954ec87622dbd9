"""Accuracy of a model on a labelled set: detection mAP and classification accuracy.

Our own code (not Ultralytics'), so a node can score a model on its golden set with nothing but
this library. Detection AP follows COCO: predictions of a class over all images in descending
score order, each matched to the unmatched ground-truth box of its class with the highest IoU
at or above the threshold; AP is the mean of the interpolated precision at 101 recall points;
mAP is the mean over the classes that have ground truth.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelledBox:
    class_id: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


@dataclass(frozen=True)
class ScoredBox:
    class_id: int
    score: float
    box: tuple[float, float, float, float]


@dataclass(frozen=True)
class DetectionScore:
    map: float  # mean AP over the classes with ground truth
    per_class: dict[int, float]
    iou_threshold: float


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4] (xyxy) -> [N, M]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    tl = np.maximum(a[:, None, :2], b[None, :, :2])
    br = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(br - tl, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO's 101-point interpolated AP from a precision/recall curve in score order."""
    if len(recall) == 0:
        return 0.0
    # Precision envelope: the best precision at this recall or any higher one.
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    points = np.linspace(0, 1, 101)
    index = np.searchsorted(recall, points, side="left")
    sampled = np.where(index < len(envelope), envelope[np.minimum(index, len(envelope) - 1)], 0)
    return float(sampled.mean())


def mean_average_precision(
    truths: Sequence[Sequence[LabelledBox]],
    predictions: Sequence[Sequence[ScoredBox]],
    iou_threshold: float = 0.5,
) -> DetectionScore:
    """mAP at ``iou_threshold`` over images; ``truths[i]`` and ``predictions[i]`` are image i's."""
    if len(truths) != len(predictions):
        raise ValueError("one list of predictions per image is needed")
    classes = sorted({t.class_id for image in truths for t in image})
    per_class: dict[int, float] = {}
    for cls in classes:
        hits: list[tuple[float, bool]] = []
        total = 0
        for image_truths, image_preds in zip(truths, predictions, strict=True):
            gt = np.array([t.box for t in image_truths if t.class_id == cls], float).reshape(-1, 4)
            total += len(gt)
            preds = sorted((p for p in image_preds if p.class_id == cls), key=lambda p: -p.score)
            hits.extend(_match(gt, preds, iou_threshold))
        hits.sort(key=lambda h: -h[0])
        tp = np.cumsum([hit for _, hit in hits], dtype=float)
        fp = np.cumsum([not hit for _, hit in hits], dtype=float)
        recall = tp / total
        precision = tp / np.maximum(tp + fp, 1e-12)
        per_class[cls] = average_precision(recall, precision)
    mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
    return DetectionScore(mean, per_class, iou_threshold)


def _match(
    gt: np.ndarray, preds: Iterable[ScoredBox], iou_threshold: float
) -> list[tuple[float, bool]]:
    preds = list(preds)
    if not preds:
        return []
    ious = iou_matrix(np.array([p.box for p in preds], float), gt)
    taken = np.zeros(len(gt), bool)
    out: list[tuple[float, bool]] = []
    for i, pred in enumerate(preds):
        candidates = np.where(taken, -1.0, ious[i]) if len(gt) else np.zeros(0)
        best = int(np.argmax(candidates)) if len(candidates) else -1
        hit = best >= 0 and candidates[best] >= iou_threshold
        if hit:
            taken[best] = True
        out.append((pred.score, hit))
    return out


def read_yolo_labels(text: str, width: int, height: int) -> list[LabelledBox]:
    """YOLO label lines (``class cx cy w h``, normalised) -> boxes in pixels."""
    boxes: list[LabelledBox] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        cls, cx, cy, w, h = int(parts[0]), *map(float, parts[1:5])
        boxes.append(
            LabelledBox(
                cls,
                ((cx - w / 2) * width, (cy - h / 2) * height,
                 (cx + w / 2) * width, (cy + h / 2) * height),
            )
        )
    return boxes


def accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of samples whose predicted class equals the label."""
    labels, predicted = np.asarray(labels), np.asarray(predicted)
    if labels.shape != predicted.shape or labels.size == 0:
        raise ValueError("labels and predictions must be non-empty and of the same shape")
    return float((labels == predicted).mean())
