from __future__ import annotations

import cv2
import numpy as np
import pytest

from inference.letterbox import (
    PAD_VALUE,
    Letterbox,
    letterbox_planes,
    scale_boxes,
    to_input,
)


def letterbox(image: np.ndarray, ih: int, iw: int) -> tuple[np.ndarray, Letterbox]:
    """What the daemon queues, seen as a BGR HxWx3 image again (for the layout checks)."""
    planes, geo = letterbox_planes(image, ih, iw)
    return np.ascontiguousarray(planes[0][::-1].transpose(1, 2, 0)), geo


def ultralytics_letterbox(image: np.ndarray, ih: int, iw: int) -> np.ndarray:
    """Ultralytics' ``LetterBox(auto=False, center=True)`` written out independently: resize
    keeping the aspect ratio, then pad with 114, ``round(d -/+ 0.1)`` on each side."""
    h, w = image.shape[:2]
    r = min(ih / h, iw / w)
    # Ultralytics' cv2.resize fails where a side rounds to 0 pixels: one pixel is kept instead.
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)
    dw, dh = (iw - new_w) / 2, (ih - new_h) / 2
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    return cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT,
                              value=(114, 114, 114))


@pytest.mark.parametrize(
    ("h", "w", "ih", "iw"),
    [
        (1080, 1920, 640, 640),
        (400, 600, 640, 640),
        (512, 512, 640, 640),
        (427, 640, 320, 416),
        (1, 3000, 640, 640),
        (3000, 1, 320, 416),
        (720, 1280, 320, 416),
    ],
)
def test_letterbox_fills_the_input_and_centres(h, w, ih, iw):
    img = np.full((h, w, 3), 7, np.uint8)
    out, geo = letterbox(img, ih, iw)
    assert out.shape == (ih, iw, 3)
    assert (geo.orig_h, geo.orig_w) == (h, w)
    content = np.argwhere(out[..., 0] == 7)
    top, left = content.min(0)
    last_row, last_col = content.max(0)
    bottom, right = ih - 1 - last_row, iw - 1 - last_col
    # Centred: the two pads differ by at most one pixel; the pad value is 114.
    assert abs(int(top) - int(bottom)) <= 1
    assert abs(int(left) - int(right)) <= 1
    if top > 0:
        assert (out[0] == PAD_VALUE).all()


def test_ultralytics_rounding_of_odd_padding():
    # 1920x1080 -> 640x360, dh = 140 each side; 600x400 -> 640x427, dh = 106.5: top 106, bottom 107.
    out, _ = letterbox(np.zeros((400, 600, 3), np.uint8), 640, 640)
    rows = np.where((out[:, 320] != PAD_VALUE).any(axis=1))[0]
    assert rows[0] == 106
    assert 640 - 1 - rows[-1] == 107


def test_scale_boxes_inverts_the_letterbox():
    h, w = 1080, 1920
    _, geo = letterbox(np.zeros((h, w, 3), np.uint8), 640, 640)
    r = 640 / 1920
    pad_y = (640 - round(h * r)) / 2
    original = np.array([[100.0, 200.0, 900.0, 1000.0], [0.0, 0.0, 1920.0, 1080.0]], np.float32)
    model_space = original * r
    model_space[:, [1, 3]] += pad_y
    back = scale_boxes(model_space, geo)
    np.testing.assert_allclose(back, original, atol=0.05)


def test_scale_boxes_clips_to_the_image():
    _, geo = letterbox(np.zeros((100, 200, 3), np.uint8), 640, 640)
    back = scale_boxes(np.array([[-50, -50, 700, 700]], np.float32), geo)
    assert back.tolist() == [[0.0, 0.0, 200.0, 100.0]]


def test_blob_is_rgb_nchw_unit_range():
    img = np.zeros((4, 6, 3), np.uint8)
    img[..., 0] = 255  # blue in BGR
    blob = to_input(letterbox_planes(img, 4, 6)[0])
    assert blob.shape == (1, 3, 4, 6)
    assert blob.dtype == np.float32
    assert blob[0, 2].max() == 1.0  # blue is the last channel in RGB
    assert blob[0, 0].max() == 0.0


@pytest.mark.parametrize(
    ("h", "w", "ih", "iw"),
    [(1080, 1920, 640, 640), (400, 600, 640, 640), (640, 640, 640, 640), (427, 640, 320, 416),
     (1, 3000, 640, 640), (3000, 1, 320, 416), (1920, 1080, 640, 480)],
)
def test_blob_equals_ultralytics_to_the_bit(h, w, ih, iw):
    # Ultralytics' predictor: LetterBox, then im[..., ::-1].transpose(2, 0, 1), float() / 255.
    img = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), np.uint8)
    boxed = ultralytics_letterbox(img, ih, iw)
    theirs = boxed[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / np.float32(255)
    # What waits in the queue: uint8 planes, converted by the inference thread.
    planes, geo = letterbox_planes(img, ih, iw)
    blob = to_input(planes)
    assert (geo.orig_h, geo.orig_w, geo.input_h, geo.input_w) == (h, w, ih, iw)
    assert blob.flags.c_contiguous
    assert np.array_equal(blob, theirs)
    assert planes.dtype == np.uint8
    assert np.array_equal(planes[0], boxed[..., ::-1].transpose(2, 0, 1))
    assert np.array_equal(to_input(planes), theirs)


def test_to_input_leaves_a_float_batch_alone():
    batch = np.full((2, 3, 4, 4), 0.5, np.float32)
    assert to_input(batch) is batch
