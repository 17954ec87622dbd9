"""The synthetic conveyor frames behind the bundled defect detector."""

from __future__ import annotations

import numpy as np

from inference.evaluation import read_yolo_labels
from training.conveyor import CLASSES, FRAME_SIZE, Frame, encode_jpeg, frame


def test_frames_are_deterministic_per_seed_and_index():
    a, b = frame(7, 3), frame(7, 3)
    assert np.array_equal(a.image, b.image)
    assert a.boxes == b.boxes
    assert not np.array_equal(frame(7, 4).image, a.image)
    assert not np.array_equal(frame(8, 3).image, a.image)


def test_frames_are_camera_sized_and_labels_are_valid_yolo_boxes_inside_the_frame():
    frames: list[Frame] = [frame(11, i) for i in range(30)]
    seen: set[int] = set()
    for f in frames:
        assert f.image.shape == (FRAME_SIZE[1], FRAME_SIZE[0], 3)
        assert f.image.dtype == np.uint8
        for line in f.yolo_labels().splitlines():
            cls, *coords = line.split()
            assert 0 <= int(cls) < len(CLASSES)
            assert all(0.0 <= float(v) <= 1.0 for v in coords)
            seen.add(int(cls))
        for box in read_yolo_labels(f.yolo_labels(), *FRAME_SIZE):
            x1, y1, x2, y2 = box.box
            assert 0 <= x1 < x2 <= FRAME_SIZE[0]
            assert 0 <= y1 < y2 <= FRAME_SIZE[1]
            assert (x2 - x1) >= 4
            assert (y2 - y1) >= 4
    assert seen == set(range(len(CLASSES)))
    # Some frames have no defect at all: the model must learn to say nothing.
    assert any(not f.boxes for f in frames)


def test_defects_change_the_pixels_inside_their_boxes():
    f = frame(5, 1)
    assert f.boxes
    image = f.image.astype(np.float32)
    for box in f.boxes:
        x1, y1, x2, y2 = (int(v) for v in (box.x1, box.y1, box.x2, box.y2))
        patch = image[y1:y2, x1:x2]
        assert patch.std() > 4, box  # a visible mark, not an empty label


def test_jpeg_encoding_round_trips():
    data = encode_jpeg(frame(1, 0).image, 85)
    assert data[:2] == b"\xff\xd8"
    assert len(data) < 200_000
