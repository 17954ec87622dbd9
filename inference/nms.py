"""YOLOv8 output decoding and class-aware NMS, as ``ultralytics.utils.nms.non_max_suppression``.

Written in numpy (float32 like Ultralytics' torch path) so the daemon needs no torch.
"""

from __future__ import annotations

import numpy as np

MAX_WH = 7680.0  # Ultralytics' class offset: boxes of different classes never overlap
MAX_NMS = 30000  # candidates kept before NMS, as Ultralytics


def decode_predictions(
    pred: np.ndarray, conf: float, iou: float, max_det: int, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's ``[4 + nc, anchors]`` output -> (xyxy boxes, scores, class ids) after NMS."""
    cls_scores = pred[4 : 4 + num_classes]
    best = cls_scores.max(axis=0)
    keep = np.flatnonzero(best > conf)  # usually a handful of 8400 anchors: argmax only those
    if not keep.size:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    class_ids = cls_scores[:, keep].argmax(axis=0)
    scores = best[keep]
    xywh = pred[:4, keep].T
    boxes = np.empty_like(xywh)
    half_w, half_h = xywh[:, 2] / 2, xywh[:, 3] / 2
    boxes[:, 0] = xywh[:, 0] - half_w
    boxes[:, 1] = xywh[:, 1] - half_h
    boxes[:, 2] = xywh[:, 0] + half_w
    boxes[:, 3] = xywh[:, 1] + half_h
    if len(scores) > MAX_NMS:
        top = np.argsort(-scores, kind="stable")[:MAX_NMS]
        boxes, scores, class_ids = boxes[top], scores[top], class_ids[top]
    offset = boxes + (class_ids.astype(np.float32) * np.float32(MAX_WH))[:, None]
    kept = nms(offset, scores, iou)[:max_det]
    return boxes[kept], scores[kept], class_ids[kept]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS like ``torchvision.ops.nms``: stable descending order, drop IoU > threshold."""
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0)
        h = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0)
        inter = w * h
        with np.errstate(divide="ignore", invalid="ignore"):  # degenerate boxes: NaN, kept
            overlap = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(overlap > iou_threshold)]
    return np.asarray(keep, dtype=np.int64)
