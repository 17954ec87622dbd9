"""edge-agent's inference library: ONNX Runtime sessions, YOLOv8 and tensor models.

No HTTP and no asyncio here: usable on its own from a notebook or a benchmark::

    from inference import YoloV8Detector
    detector = YoloV8Detector.load("model.onnx")
    detections = detector.detect(open("frame.jpg", "rb").read())
"""

from inference.errors import (
    EdgeError,
    GoldenSetError,
    ImageTooLargeError,
    InvalidImageError,
    ModelLoadError,
    ProviderUnavailableError,
    UnsupportedImageFormatError,
)
from inference.image import decode_image, read_header
from inference.session import LoadedSession, SessionConfig, create_session, file_digest
from inference.tensor import TensorInputError, TensorModel, TensorSpec
from inference.yolo import (
    Detection,
    InvalidThresholdError,
    PreparedImage,
    Thresholds,
    YoloV8Detector,
)

__all__ = [
    "Detection",
    "EdgeError",
    "GoldenSetError",
    "ImageTooLargeError",
    "InvalidImageError",
    "InvalidThresholdError",
    "LoadedSession",
    "ModelLoadError",
    "PreparedImage",
    "ProviderUnavailableError",
    "SessionConfig",
    "TensorInputError",
    "TensorModel",
    "TensorSpec",
    "Thresholds",
    "UnsupportedImageFormatError",
    "YoloV8Detector",
    "create_session",
    "decode_image",
    "file_digest",
    "read_header",
]
