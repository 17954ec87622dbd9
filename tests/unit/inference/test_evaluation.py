"""Our own mAP and accuracy, on cases whose answer is known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from inference.evaluation import (
    LabelledBox,
    ScoredBox,
    accuracy,
    average_precision,
    iou_matrix,
    mean_average_precision,
    read_yolo_labels,
)

A = (0.0, 0.0, 10.0, 10.0)
B = (20.0, 20.0, 30.0, 30.0)


def test_iou_matrix():
    iou = iou_matrix(np.array([A, B]), np.array([A, (5.0, 0.0, 15.0, 10.0)]))
    np.testing.assert_allclose(iou, [[1.0, 1 / 3], [0.0, 0.0]])
    assert iou_matrix(np.zeros((0, 4)), np.array([A])).shape == (0, 1)


def test_perfect_predictions_score_one_and_misses_lower_recall():
    truths = [[LabelledBox(0, A), LabelledBox(1, B)], [LabelledBox(0, B)]]
    perfect = [[ScoredBox(0, 0.9, A), ScoredBox(1, 0.8, B)], [ScoredBox(0, 0.7, B)]]
    score = mean_average_precision(truths, perfect)
    assert score.map == pytest.approx(1.0)
    half = [[ScoredBox(0, 0.9, A), ScoredBox(1, 0.8, B)], []]  # class 0 misses one of two
    score = mean_average_precision(truths, half)
    assert score.per_class[1] == pytest.approx(1.0)
    # Recall reaches 0.5 at precision 1: 51 of 101 recall points (0.00 .. 0.50) score 1.
    assert score.per_class[0] == pytest.approx(51 / 101)


def test_a_false_positive_ranked_first_halves_precision_and_duplicates_count_as_false():
    truths = [[LabelledBox(0, A)]]
    ranked = [[ScoredBox(0, 0.95, B), ScoredBox(0, 0.9, A)]]
    assert mean_average_precision(truths, ranked).map == pytest.approx(0.5)
    duplicate = [[ScoredBox(0, 0.9, A), ScoredBox(0, 0.8, A)]]
    assert mean_average_precision(truths, duplicate).map == pytest.approx(1.0)
    wrong_class = [[ScoredBox(1, 0.9, A)]]
    assert mean_average_precision(truths, wrong_class).map == 0.0
    shifted = [[ScoredBox(0, 0.9, (4.0, 0.0, 14.0, 10.0))]]  # IoU 0.43 < 0.5
    assert mean_average_precision(truths, shifted).map == 0.0
    assert mean_average_precision(truths, shifted, iou_threshold=0.4).map == pytest.approx(1.0)


def test_average_precision_envelope():
    recall = np.array([0.5, 0.5, 1.0])
    precision = np.array([1.0, 0.5, 0.667])
    assert average_precision(recall, precision) == pytest.approx((51 + 50 * 0.667) / 101)


def test_yolo_labels_to_pixels_and_accuracy():
    (box,) = read_yolo_labels("2 0.5 0.25 0.2 0.1\n\n", 640, 480)
    assert box.class_id == 2
    assert box.box == pytest.approx((256.0, 96.0, 384.0, 144.0))
    assert accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 1, 2])) == 0.75
    with pytest.raises(ValueError, match="same shape"):
        accuracy(np.array([0]), np.array([0, 1]))
