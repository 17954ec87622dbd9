"""Agreement between two versions' answers (shadow runs)."""

from __future__ import annotations

import numpy as np
import pytest

from inference import Detection
from inference.agreement import argmax_agreement, detection_agreement


def det(cls: int, x: float, y: float, w: float = 10.0) -> Detection:
    return Detection(cls, str(cls), 0.9, (x, y, x + w, y + w))


def test_detections_match_one_to_one_at_iou_half_with_the_same_class():
    a = [det(0, 0, 0), det(1, 50, 50), det(2, 100, 100)]
    assert detection_agreement(a, list(a)) == 1.0
    assert detection_agreement([], []) == 1.0
    assert detection_agreement(a, []) == 0.0
    # Same boxes, one class changed: 2 of 3 match on each side.
    b = [det(0, 0, 0), det(1, 50, 50), det(0, 100, 100)]
    assert detection_agreement(a, b) == pytest.approx(2 * 2 / 6)
    # Shifted by 4 px of 10: IoU 6*10/(140) < 0.5: no match; by 2 px: 80/120 > 0.5.
    assert detection_agreement([det(0, 0, 0)], [det(0, 4, 0)]) == 0.0
    assert detection_agreement([det(0, 0, 0)], [det(0, 2, 0)]) == 1.0
    # One-to-one: two shadow boxes on one live box count once.
    assert detection_agreement([det(0, 0, 0)], [det(0, 0, 0), det(0, 1, 0)]) == \
        pytest.approx(2 / 3)


def test_tensor_rows_agree_on_the_argmax_of_the_first_output():
    a = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    assert argmax_agreement(a, a * 2) == 1.0
    b = a.copy()
    b[0] = [0.9, 0.1]
    assert argmax_agreement(a, b) == 0.75
    assert argmax_agreement(a, a[:2]) == 0.0
