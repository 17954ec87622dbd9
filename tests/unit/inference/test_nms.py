from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from inference.nms import MAX_WH, decode_predictions, nms


def _reference_nms(boxes, scores, thr):
    """Textbook greedy NMS, one pair at a time."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    keep = []
    for i in order:
        ok = True
        for k in keep:
            a, b = boxes[i], boxes[k]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.floats(0.1, 0.9), st.integers(0, 10_000))
def test_nms_matches_textbook_greedy(n, thr, seed):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 100, (n, 2)).astype(np.float32)
    wh = rng.uniform(1, 60, (n, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], axis=1)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    assert nms(boxes, scores, thr).tolist() == _reference_nms(boxes.tolist(), scores.tolist(), thr)


def _pred(rows):
    """Build a [4+nc, anchors] output from (cx, cy, w, h, scores...) rows."""
    return np.array(rows, np.float32).T


def test_decode_is_class_aware_and_thresholds_strictly():
    pred = _pred(
        [
            [50, 50, 20, 20, 0.9, 0.0],
            [51, 51, 20, 20, 0.0, 0.8],  # same place, other class: kept
            [52, 50, 20, 20, 0.7, 0.0],  # same class, overlapping: suppressed
            [200, 200, 10, 10, 0.25, 0.0],  # exactly at conf: dropped (strict >)
        ]
    )
    boxes, scores, classes = decode_predictions(pred, 0.25, 0.7, 300, 2)
    assert classes.tolist() == [0, 1]
    np.testing.assert_allclose(scores, [0.9, 0.8])
    np.testing.assert_allclose(boxes[0], [40, 40, 60, 60])


def test_decode_respects_max_det_and_empty():
    rows = [[i * 30.0, 10, 5, 5, 0.5 + i / 100, 0] for i in range(10)]
    _, scores, _ = decode_predictions(_pred(rows), 0.25, 0.7, 3, 2)
    assert len(scores) == 3
    assert scores[0] == max(scores)
    boxes, scores, classes = decode_predictions(_pred(rows), 0.99, 0.7, 3, 2)
    assert boxes.shape == (0, 4)
    assert len(scores) == 0
    assert len(classes) == 0


def test_boxes_of_different_classes_never_suppress_each_other():
    # Identical boxes, ten classes: the 7680-pixel class offset keeps all ten.
    rows = [[100, 100, 50, 50] + [0.9 if c == k else 0.0 for c in range(10)] for k in range(10)]
    _, _, classes = decode_predictions(_pred(rows), 0.25, 0.7, 300, 10)
    assert sorted(classes.tolist()) == list(range(10))
    assert MAX_WH * 9 > 640
