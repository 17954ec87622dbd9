"""YOLOv8 pre-processing, exactly as Ultralytics' ``LetterBox(auto=False)`` and predictor do it."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """Where the original image sits inside the model input: enough to map boxes back."""

    orig_h: int
    orig_w: int
    input_h: int
    input_w: int


def letterbox(image: np.ndarray, input_h: int, input_w: int) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad with 114, centred, to ``input_h x input_w``."""
    h, w = image.shape[:2]
    r = min(input_h / h, input_w / w)
    new_w, new_h = max(round(w * r), 1), max(round(h * r), 1)  # thin images keep one pixel
    dw, dh = (input_w - new_w) / 2, (input_h - new_h) / 2
    if (w, h) != (new_w, new_h):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = round(dh - 0.1), round(dh + 0.1)
    left, right = round(dw - 0.1), round(dw + 0.1)
    image = cv2.copyMakeBorder(
        image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    return image, Letterbox(h, w, input_h, input_w)


def to_blob(images: list[np.ndarray]) -> np.ndarray:
    """BGR uint8 HWC images -> RGB float32 NCHW in [0, 1] (one contiguous batch)."""
    return cv2.dnn.blobFromImages(images, scalefactor=1.0 / 255.0, swapRB=True, crop=False)


def scale_boxes(boxes: np.ndarray, lb: Letterbox) -> np.ndarray:
    """Map xyxy boxes from model-input pixels back to original-image pixels, clipped.

    Mirrors ``ultralytics.utils.ops.scale_boxes``: the gain of each axis is taken from the
    rounded resized side, so thin images and odd sizes land on the same pixels.
    """
    gain = min(lb.input_h / lb.orig_h, lb.input_w / lb.orig_w)
    new_h, new_w = max(round(lb.orig_h * gain), 1), max(round(lb.orig_w * gain), 1)
    gain_y, gain_x = new_h / lb.orig_h, new_w / lb.orig_w
    pad_x = round((lb.input_w - new_w) / 2 - 0.1)
    pad_y = round((lb.input_h - new_h) / 2 - 0.1)
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - pad_x) / gain_x
    out[:, [1, 3]] = (out[:, [1, 3]] - pad_y) / gain_y
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, lb.orig_w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, lb.orig_h)
    return out
