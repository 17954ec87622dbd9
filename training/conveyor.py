"""Seeded synthetic conveyor frames with labelled surface defects (the ``defects`` model's data).

A fixed inspection camera looks down on a belt carrying stamped metal parts (plates, discs,
hexagon nuts, L-brackets). Each frame gets its own ``numpy`` generator seeded from
``(seed, index)``, so frame *i* is the same bytes whatever else is generated around it.

Variation that a real line has and a detector must shrug off: belt colour and texture, part
shape, size, position and rotation, brushed-metal tone, a lighting gradient with a hot spot,
motion/defocus blur, sensor noise and JPEG compression.

Defects (the classes, in this order):

- ``scratch``: a long thin line, brighter or darker than the metal, slightly curved;
- ``dent``: a soft round depression, shaded dark on the side away from the light, with a
  highlight on the other;
- ``hole``: a sharp-edged dark circle with a bright machined rim;
- ``stain``: an irregular rust-brown or oily-dark blotch.

Labels are YOLO format: ``class cx cy w h`` normalised to the frame, one line per defect,
the box clipped to the frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

CLASSES: tuple[str, ...] = ("scratch", "dent", "hole", "stain")
FRAME_SIZE: tuple[int, int] = (640, 480)  # width, height: a VGA inspection camera

_SHAPES = ("plate", "disc", "hexagon", "bracket")


@dataclass(frozen=True)
class Box:
    class_id: int
    x1: float
    y1: float
    x2: float
    y2: float

    def yolo_line(self, width: int, height: int) -> str:
        cx = (self.x1 + self.x2) / 2 / width
        cy = (self.y1 + self.y2) / 2 / height
        w = (self.x2 - self.x1) / width
        h = (self.y2 - self.y1) / height
        return f"{self.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"


@dataclass(frozen=True)
class Frame:
    image: np.ndarray  # H x W x 3 uint8, BGR
    boxes: tuple[Box, ...]

    def yolo_labels(self) -> str:
        height, width = self.image.shape[:2]
        return "".join(box.yolo_line(width, height) + "\n" for box in self.boxes)


def frame(seed: int, index: int, size: tuple[int, int] = FRAME_SIZE) -> Frame:
    """Frame ``index`` of the sequence ``seed``; the same arguments give the same frame."""
    rng = np.random.default_rng([seed, index])
    width, height = size
    image = _belt(rng, width, height)
    boxes: list[Box] = []
    for center, radius in _place_parts(rng, width, height):
        mask, tone = _draw_part(rng, image, center, radius)
        boxes.extend(_draw_defects(rng, image, mask, tone, center, radius))
    image = _camera(rng, image)
    return Frame(image=image, boxes=tuple(boxes))


def _belt(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    base = rng.uniform(25, 95, size=3) * rng.uniform(0.8, 1.2, size=3)
    image = np.empty((height, width, 3), np.float32)
    image[:] = base
    # Woven belt texture: fine noise stretched along the direction of travel.
    coarse = rng.normal(0, rng.uniform(3, 10), size=(height // 4 + 1, width // 16 + 1))
    grain = cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    image += grain[..., None]
    # Seams across the belt.
    for _ in range(int(rng.integers(0, 3))):
        x = int(rng.integers(0, width))
        cv2.line(image, (x, 0), (x, height), tuple(float(v) for v in base * 0.6), 2)
    return image


def _place_parts(
    rng: np.random.Generator, width: int, height: int
) -> list[tuple[tuple[float, float], float]]:
    count = int(rng.choice([1, 1, 2, 2, 3]))
    parts: list[tuple[tuple[float, float], float]] = []
    for _ in range(count * 8):  # rejection sampling: parts may touch, never pile up
        if len(parts) == count:
            break
        radius = float(rng.uniform(0.17, 0.30) * height) * (1.0 if count == 1 else 0.8)
        cx = float(rng.uniform(radius * 0.7, width - radius * 0.7))
        cy = float(rng.uniform(radius * 0.7, height - radius * 0.7))
        if all(math.dist((cx, cy), c) > (radius + r) * 0.9 for c, r in parts):
            parts.append(((cx, cy), radius))
    return parts


def _polygon(rng: np.random.Generator, center: tuple[float, float], radius: float) -> np.ndarray:
    shape = _SHAPES[int(rng.integers(len(_SHAPES)))]
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "disc":
        t = np.linspace(0, 2 * math.pi, 64, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "hexagon":
        t = np.linspace(0, 2 * math.pi, 6, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1)
    elif shape == "plate":
        aspect = rng.uniform(0.55, 0.9)
        pts = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]], np.float64)
    else:  # bracket: an L
        pts = np.array([[-1, -1], [1, -1], [1, -0.3], [-0.3, -0.3], [-0.3, 1], [-1, 1]], float)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return (pts @ rot.T * radius + np.asarray(center)).astype(np.int32)


def _draw_part(
    rng: np.random.Generator,
    image: np.ndarray,
    center: tuple[float, float],
    radius: float,
) -> tuple[np.ndarray, np.ndarray]:
    height, width = image.shape[:2]
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [_polygon(rng, center, radius)], 255)
    if rng.random() < 0.3:  # a mounting hole in the middle is part of the design, not a defect
        cv2.circle(mask, (int(center[0]), int(center[1])), int(radius * 0.18), 0, -1)
    tone = rng.uniform(120, 200) * np.array(
        [rng.uniform(0.95, 1.05), 1.0, rng.uniform(0.92, 1.05)], np.float32
    )
    metal = np.empty_like(image)
    metal[:] = tone
    # Brushed finish: streaks along a random direction.
    rows = rng.normal(0, rng.uniform(2, 7), size=(height, 1)).astype(np.float32)
    flat = np.repeat(rows, width, axis=1)
    rot = cv2.getRotationMatrix2D((width / 2, height / 2), float(rng.uniform(0, 180)), 1.5)
    streaks = cv2.warpAffine(flat, rot, (width, height), borderMode=cv2.BORDER_REFLECT)
    metal += streaks[..., None]
    # A cast shadow on the belt, then the part over it.
    shadow = cv2.GaussianBlur(np.roll(mask, (6, 6), (0, 1)), (0, 0), 5).astype(np.float32) / 255
    image *= 1 - 0.45 * shadow[..., None]
    inside = mask > 0
    image[inside] = metal[inside]
    return mask, tone


def _draw_defects(
    rng: np.random.Generator,
    image: np.ndarray,
    part_mask: np.ndarray,
    tone: np.ndarray,
    center: tuple[float, float],
    radius: float,
) -> list[Box]:
    boxes: list[Box] = []
    count = int(rng.choice([0, 1, 1, 2, 2, 3]))
    occupied: list[tuple[float, float, float]] = []
    for _ in range(count * 10):
        if len(boxes) == count:
            break
        class_id = int(rng.integers(len(CLASSES)))
        size = float(rng.uniform(0.15, 0.3) * radius + 12)
        offset = rng.uniform(-0.65, 0.65, size=2) * radius
        x, y = center[0] + offset[0], center[1] + offset[1]
        xi, yi = int(x), int(y)
        if not (0 <= xi < part_mask.shape[1] and 0 <= yi < part_mask.shape[0]):
            continue
        if part_mask[yi, xi] == 0 or any(math.dist((x, y), (ox, oy)) < (size + s) * 0.8
                                         for ox, oy, s in occupied):
            continue
        # Paint on a copy, keep the paint only on the metal, box what is left of it.
        canvas = image.copy()
        footprint = np.zeros(part_mask.shape, np.float32)
        painter = (_scratch, _dent, _hole, _stain)[class_id]
        painter(rng, canvas, footprint, (x, y), size, tone)
        on_metal = part_mask.astype(np.float32)[..., None] / 255
        ys, xs = np.nonzero((footprint > 0.25) & (part_mask > 0))
        if len(xs) < 12:
            continue
        image[:] = canvas * on_metal + image * (1 - on_metal)
        boxes.append(Box(class_id, float(xs.min()), float(ys.min()),
                         float(xs.max() + 1), float(ys.max() + 1)))
        occupied.append((x, y, size))
    return boxes


def _blend(canvas: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    canvas[:] = canvas * (1 - alpha[..., None]) + colour * alpha[..., None]


def _scratch(rng: np.random.Generator, canvas: np.ndarray, footprint: np.ndarray,
             at: tuple[float, float], size: float, tone: np.ndarray) -> None:
    length = size * rng.uniform(2.0, 3.5)
    angle = rng.uniform(0, math.pi)
    bend = rng.uniform(-0.25, 0.25)
    t = np.linspace(-0.5, 0.5, 24)
    along = np.array([math.cos(angle), math.sin(angle)])
    across = np.array([-math.sin(angle), math.cos(angle)])
    pts = (np.asarray(at)[:, None] + along[:, None] * t * length
           + across[:, None] * (bend * length * (t**2 - 0.25)))
    cv2.polylines(footprint, [pts.T.astype(np.int32)], False, 1.0,
                  int(rng.integers(2, 4)), cv2.LINE_AA)
    bright = rng.random() < 0.5
    _blend(canvas, footprint, np.minimum(tone * 1.45, 255) if bright else tone * 0.35)


def _dent(rng: np.random.Generator, canvas: np.ndarray, footprint: np.ndarray,
          at: tuple[float, float], size: float, tone: np.ndarray) -> None:
    axes = (int(size * rng.uniform(0.5, 0.8)), int(size * rng.uniform(0.4, 0.7)))
    cv2.ellipse(footprint, (int(at[0]), int(at[1])), axes, float(rng.uniform(0, 180)), 0, 360,
                1.0, -1, cv2.LINE_AA)
    footprint[:] = cv2.GaussianBlur(footprint, (0, 0), max(axes) * 0.25)
    footprint /= max(float(footprint.max()), 1e-6)
    # Shading: dark on the side away from the light (top-left), a highlight on the other.
    ys, xs = np.mgrid[0:footprint.shape[0], 0:footprint.shape[1]].astype(np.float32)
    side = ((xs - at[0]) + (ys - at[1])) / max(size, 1.0)
    shade = np.clip(0.5 - 0.5 * side, 0, 1)
    _blend(canvas, 0.6 * footprint * shade, tone * 0.3)
    _blend(canvas, 0.5 * footprint * (1 - shade) * (side > 0.2), np.minimum(tone * 1.5, 255))


def _hole(rng: np.random.Generator, canvas: np.ndarray, footprint: np.ndarray,
          at: tuple[float, float], size: float, tone: np.ndarray) -> None:
    r = max(int(size * rng.uniform(0.3, 0.5)), 5)
    centre = (int(at[0]), int(at[1]))
    rim = tuple(float(v) for v in np.minimum(tone * 1.35, 255))
    cv2.circle(canvas, centre, r + 2, rim, 2, cv2.LINE_AA)
    cv2.circle(canvas, centre, r, tuple(float(v) for v in tone * 0.12), -1, cv2.LINE_AA)
    cv2.circle(footprint, centre, r + 3, 1.0, -1, cv2.LINE_AA)


def _stain(rng: np.random.Generator, canvas: np.ndarray, footprint: np.ndarray,
           at: tuple[float, float], size: float, tone: np.ndarray) -> None:
    for _ in range(int(rng.integers(3, 7))):
        off = rng.normal(0, size * 0.25, size=2)
        r = int(size * rng.uniform(0.2, 0.45))
        cv2.circle(footprint, (int(at[0] + off[0]), int(at[1] + off[1])), r, 1.0, -1)
    footprint[:] = cv2.GaussianBlur(footprint, (0, 0), size * 0.08 + 1)
    rust = rng.random() < 0.6
    colour = np.array([30, 70, 140] if rust else [40, 45, 50], np.float32)
    _blend(canvas, footprint * rng.uniform(0.75, 0.95), colour)


def _camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    # Lighting: an overall level, a linear gradient and a soft hot spot.
    gx, gy = rng.uniform(-0.35, 0.35, size=2)
    light = rng.uniform(0.7, 1.2) * (1 + gx * (xs / width - 0.5) + gy * (ys / height - 0.5))
    hx, hy = rng.uniform(0, width), rng.uniform(0, height)
    light += rng.uniform(0, 0.3) * np.exp(-((xs - hx) ** 2 + (ys - hy) ** 2) / (0.1 * width**2))
    image = image * light[..., None]
    if rng.random() < 0.5:  # motion blur along the belt
        k = int(rng.integers(2, 6))
        kernel = np.zeros((1, k), np.float32) + 1 / k
        image = cv2.filter2D(image, -1, kernel)
    if rng.random() < 0.5:  # slight defocus
        image = cv2.GaussianBlur(image, (0, 0), float(rng.uniform(0.4, 1.2)))
    image = image + rng.normal(0, rng.uniform(1, 5), size=image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def encode_jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()
