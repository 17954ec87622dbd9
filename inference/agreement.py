"""How far two versions of a model agree on the same input (shadow runs; no labels needed).

Detectors: the F1 of the detections matched one-to-one at IoU >= 0.5 with the same class
(greedy, highest IoU first), both sides at the same thresholds; two empty answers agree fully.
Tensor models: the share of rows (first axis) with the same argmax of the first output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inference.evaluation import iou_matrix
from inference.yolo import Detection

MIN_IOU = 0.5


def detection_agreement(a: Sequence[Detection], b: Sequence[Detection],
                        min_iou: float = MIN_IOU) -> float:
    """F1 in [0, 1] of ``b`` against ``a`` (symmetric)."""
    if not a and not b:
        return 1.0
    if not a or not b:
        return 0.0
    iou = iou_matrix(np.array([d.box for d in a], dtype=np.float64),
                     np.array([d.box for d in b], dtype=np.float64))
    same = np.array([[da.class_id == db.class_id for db in b] for da in a])
    iou = np.where(same & (iou >= min_iou), iou, 0.0)
    matched = 0
    while iou.size and iou.max() > 0:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        matched += 1
        iou[i, :] = 0.0
        iou[:, j] = 0.0
    return 2.0 * matched / (len(a) + len(b))


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows of ``a`` and ``b`` (same first axis) whose argmax over the rest agrees."""
    if a.shape[:1] != b.shape[:1]:
        return 0.0
    rows = a.shape[0]
    if rows == 0:
        return 1.0
    left = a.reshape(rows, -1).argmax(axis=1)
    right = b.reshape(rows, -1).argmax(axis=1)
    return float((left == right).mean()) if a.shape == b.shape else 0.0
