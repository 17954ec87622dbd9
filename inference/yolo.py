"""The YOLOv8 detector: bytes in, boxes in original-image pixels out.

The stages are separate methods so a server can run them on different threads and batch the
middle one: :meth:`YoloV8Detector.preprocess` (decode, letterbox, blob), :meth:`infer` (one
``session.run`` for a batch), :meth:`postprocess` (NMS, scale back). :meth:`detect` chains them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inference.errors import EdgeError
from inference.image import DEFAULT_MAX_PIXELS, decode_image
from inference.letterbox import Letterbox, letterbox_planes, scale_boxes, to_input
from inference.model_info import DetectorSpec, detector_spec
from inference.nms import decode_predictions
from inference.session import LoadedSession, SessionConfig, create_session


class InvalidThresholdError(EdgeError):
    """conf/iou/max_det outside their valid range."""


@dataclass(frozen=True)
class Thresholds:
    conf: float = 0.25
    iou: float = 0.7
    max_det: int = 300

    def __post_init__(self) -> None:
        if not 0.0 <= self.conf <= 1.0:
            raise InvalidThresholdError(f"conf must be in [0, 1], got {self.conf}")
        if not 0.0 <= self.iou <= 1.0:
            raise InvalidThresholdError(f"iou must be in [0, 1], got {self.iou}")
        if not 1 <= self.max_det <= 10000:
            raise InvalidThresholdError(f"max_det must be in [1, 10000], got {self.max_det}")


@dataclass(frozen=True)
class Detection:
    class_id: int
    label: str
    score: float
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in original-image pixels

    def as_dict(self) -> dict:
        return {
            "class_id": self.class_id,
            "label": self.label,
            "score": self.score,
            "box": list(self.box),
        }


@dataclass(frozen=True)
class PreparedImage:
    # [1, 3, H, W] uint8 RGB, letterboxed: the model's input before the division by 255, which
    # the inference thread does (a quarter of the memory while the frame waits in the queue).
    blob: np.ndarray
    geometry: Letterbox

    @property
    def width(self) -> int:
        return self.geometry.orig_w

    @property
    def height(self) -> int:
        return self.geometry.orig_h


class YoloV8Detector:
    """A loaded YOLOv8 ONNX model. Thread-safe: ORT sessions allow concurrent ``run`` calls."""

    def __init__(self, loaded: LoadedSession, names: dict[int, str] | None = None) -> None:
        self.loaded = loaded
        session = loaded.session
        self.spec: DetectorSpec = detector_spec(
            session.get_inputs(), session.get_outputs(), loaded.metadata, names
        )
        self._output_name = session.get_outputs()[0].name
        self._pad_to: int | None = None  # see fix_batch

    @classmethod
    def load(
        cls,
        path: str | Path,
        config: SessionConfig | None = None,
        names: dict[int, str] | None = None,
        digest: str | None = None,
    ) -> YoloV8Detector:
        return cls(create_session(Path(path), config or SessionConfig(), digest), names)

    @property
    def names(self) -> dict[int, str]:
        return self.spec.names

    @property
    def provider(self) -> str:
        return self.loaded.provider

    @property
    def max_batch(self) -> int | None:
        """The largest batch one run takes: the fixed batch size, or None when dynamic."""
        return self.spec.fixed_batch

    def preprocess(
        self, image: bytes | np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS
    ) -> PreparedImage:
        """Decode (bytes) or take a BGR array, letterbox, and make the model's input blob."""
        if isinstance(image, (bytes, bytearray, memoryview)):
            image = decode_image(bytes(image), max_pixels)
        elif image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        planes, geometry = letterbox_planes(image, self.spec.input_h, self.spec.input_w)
        return PreparedImage(planes, geometry)

    def fix_batch(self, size: int) -> bool:
        """Run every batch padded to exactly ``size`` images (a dynamic-batch model only).

        On CUDA, ONNX Runtime re-plans every convolution whenever the input shape differs from
        the last run's: 50-600 ms a run on an H200 (cuDNN algorithm search), against 4-5 ms for
        a padded batch of 4. One shape, warmed up at load, never pays that."""
        if self.spec.fixed_batch is not None or size < 1:
            return False
        self._pad_to = size
        return True

    def infer(self, blobs: list[np.ndarray]) -> list[np.ndarray]:
        """Run the model on a batch of ``[1, 3, H, W]`` blobs (uint8 planes as :meth:`preprocess`
        makes them, or float32 input); one ``[4+nc, anchors]`` output each."""
        if len({b.dtype for b in blobs}) > 1:  # concatenating would scale uint8 as float
            blobs = [to_input(b) for b in blobs]
        fixed = self.spec.fixed_batch or self._pad_to
        if fixed is None:
            return list(self._run(np.concatenate(blobs) if len(blobs) > 1 else blobs[0]))
        outputs: list[np.ndarray] = []
        for start in range(0, len(blobs), fixed):
            chunk = blobs[start : start + fixed]
            batch = np.concatenate(chunk) if len(chunk) > 1 else chunk[0]
            if len(chunk) < fixed:  # a static batch > 1 must be filled
                pad = np.zeros((fixed - len(chunk), *batch.shape[1:]), batch.dtype)
                batch = np.concatenate([batch, pad])
            outputs.extend(self._run(batch)[: len(chunk)])
        return outputs

    def postprocess(
        self, raw: np.ndarray, image: PreparedImage, thresholds: Thresholds = Thresholds()
    ) -> list[Detection]:
        boxes, scores, class_ids = decode_predictions(
            raw, thresholds.conf, thresholds.iou, thresholds.max_det, self.spec.num_classes
        )
        boxes = scale_boxes(boxes, image.geometry)
        names = self.spec.names
        return [
            Detection(
                int(c),
                names[int(c)],
                float(s),
                (float(b[0]), float(b[1]), float(b[2]), float(b[3])),
            )
            for b, s, c in zip(boxes, scores, class_ids, strict=True)
        ]

    def detect(
        self,
        image: bytes | np.ndarray,
        thresholds: Thresholds = Thresholds(),
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> list[Detection]:
        prepared = self.preprocess(image, max_pixels)
        return self.postprocess(self.infer([prepared.blob])[0], prepared, thresholds)

    def sample_input(self) -> np.ndarray:
        """A grey letterbox-coloured frame's blob: one item for :meth:`infer`."""
        return np.full((1, 3, self.spec.input_h, self.spec.input_w), 114, np.uint8)

    def warmup(self, batch: int = 1) -> None:
        """Run once on a grey frame so the first request does not pay for lazy initialisation."""
        self.infer([self.sample_input()] * batch)

    def use_session(self, loaded: LoadedSession) -> None:
        """Run on ``loaded`` (the same model, built with other threads) from now on, warmed up
        first: a run already going finishes on the session it started on."""
        batch = np.concatenate([self.sample_input()] * (self._pad_to or 1))
        loaded.session.run([self._output_name], {self.spec.input_name: to_input(batch)})
        self.loaded = loaded

    def _run(self, batch: np.ndarray) -> np.ndarray:
        feed = {self.spec.input_name: to_input(batch)}
        return self.loaded.session.run([self._output_name], feed)[0]
