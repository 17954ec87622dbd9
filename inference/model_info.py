"""What a YOLOv8 ONNX file says about itself: input size, batch axis, classes."""

from __future__ import annotations

import ast
from dataclasses import dataclass

from inference.errors import ModelLoadError


@dataclass(frozen=True)
class DetectorSpec:
    input_name: str
    input_h: int
    input_w: int
    fixed_batch: int | None  # None: the batch axis is dynamic
    num_classes: int
    names: dict[int, str]


def detector_spec(
    inputs: list, outputs: list, metadata: dict[str, str], names: dict[int, str] | None = None
) -> DetectorSpec:
    """Read a detector's interface from ORT's input/output metadata and the ONNX metadata map.

    ``names`` (from the model's sidecar) wins over the ``names`` that Ultralytics writes into the
    ONNX metadata; without either, classes are named by their index.
    """
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ModelLoadError("a YOLOv8 detector has one NCHW image input", _shapes(inputs))
    if len(outputs) < 1 or len(outputs[0].shape) != 3:
        raise ModelLoadError(
            "a YOLOv8 detector's first output is [batch, 4+nc, anchors]", _shapes(outputs)
        )
    batch, channels, height, width = inputs[0].shape
    if channels not in (3, "3") and isinstance(channels, int):
        raise ModelLoadError(f"the image input must have 3 channels, not {channels}")
    meta_size = _imgsz(metadata.get("imgsz"))
    if isinstance(height, int) and isinstance(width, int):
        input_h, input_w = height, width
    elif meta_size is not None:
        input_h, input_w = meta_size
    else:
        raise ModelLoadError("the input size is dynamic and the metadata has no imgsz")
    rows, anchors = outputs[0].shape[1], outputs[0].shape[2]
    meta_names = parse_names(metadata.get("names"))
    names = names or meta_names
    if isinstance(rows, int):
        if isinstance(anchors, int) and rows > anchors:
            raise ModelLoadError(
                "output is [batch, anchors, 4+nc]; export with Ultralytics' "
                "default layout [batch, 4+nc, anchors]"
            )
        num_classes = rows - 4
    elif names:
        num_classes = len(names)
    else:
        raise ModelLoadError("cannot tell the number of classes: dynamic output, no names")
    if num_classes < 1:
        raise ModelLoadError(f"output has {rows} rows: fewer than 4 box + 1 class")
    names = {i: (names or {}).get(i, str(i)) for i in range(num_classes)}
    fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
    return DetectorSpec(inputs[0].name, input_h, input_w, fixed_batch, num_classes, names)


def parse_names(raw: str | None) -> dict[int, str]:
    """Ultralytics writes ``names`` as a Python dict literal: ``{0: 'person', 1: 'bicycle'}``."""
    if not raw:
        return {}
    try:
        value = ast.literal_eval(raw)  # literals only: never evaluates code
    except (ValueError, SyntaxError):
        return {}
    if isinstance(value, dict):
        return {int(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        return {i: str(v) for i, v in enumerate(value)}
    return {}


def _imgsz(raw: str | None) -> tuple[int, int] | None:
    if not raw:
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return int(value[0]), int(value[1])
    return None


def _shapes(args: list) -> list:
    return [{"name": a.name, "shape": list(a.shape)} for a in args]
