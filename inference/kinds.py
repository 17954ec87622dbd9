"""Model kinds: what a model file is and how to load it, as an explicit registry.

Every kind loads into a :class:`Servable`, the one interface the daemon's batcher needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import onnxruntime as ort

from inference.errors import ModelLoadError
from inference.session import LoadedSession, SessionConfig
from inference.tensor import TensorModel
from inference.yolo import YoloV8Detector


class Servable(Protocol):
    @property
    def provider(self) -> str: ...

    @property
    def max_batch(self) -> int | None:
        """The most items one ``infer`` call can take in one run; None: no limit."""
        ...

    def infer(self, batch: list[Any]) -> list[Any]: ...

    def fix_batch(self, size: int) -> bool:
        """Pad every run to ``size`` items from now on; False where the kind cannot."""
        ...

    def sample_input(self) -> Any:
        """One valid item for :meth:`infer` (a self-test input)."""
        ...

    def warmup(self, batch: int = 1) -> None: ...

    @property
    def loaded(self) -> LoadedSession: ...

    def use_session(self, loaded: LoadedSession) -> None:
        """Warm up ``loaded`` (the same model, other threads), then run on it from now on."""
        ...


# path, session config, names override (detectors only), file digest
Loader = Callable[[Path, SessionConfig, "dict[int, str] | None", str], Servable]


def _load_yolov8(
    path: Path, config: SessionConfig, names: dict[int, str] | None, digest: str
) -> Servable:
    return YoloV8Detector.load(path, config, names, digest)


def _load_tensor(
    path: Path, config: SessionConfig, names: dict[int, str] | None, digest: str
) -> Servable:
    return TensorModel.load(path, config, digest)


def model_kinds() -> dict[str, Loader]:
    """``kind`` (as in settings and sidecars) -> loader."""
    return {"yolov8": _load_yolov8, "tensor": _load_tensor}


def servable_from_session(
    kind: str, loaded: LoadedSession, names: dict[int, str] | None
) -> Servable:
    """A runner of ``kind`` on a session already built (by any session factory: ONNX Runtime
    on another file, another runtime behind the same session interface)."""
    if kind == "yolov8":
        return YoloV8Detector(loaded, names)
    if kind == "tensor":
        return TensorModel(loaded)
    raise ModelLoadError(f"unknown model kind {kind!r}")


AUTO = "auto"


def sniff_kind(path: Path) -> str:
    """The kind a model file's graph looks like: one 3-channel NCHW image input and a
    ``[batch, rows, anchors]`` first output is a YOLOv8 detector; anything else is served as
    a tensor model. Reads the graph's signature only (a CPU session, no optimisation)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own untyped errors for unreadable graphs
        raise ModelLoadError(f"onnxruntime cannot load {path.name}: {exc}", str(path)) from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    one_nchw = len(inputs) == 1 and len(inputs[0].shape) == 4
    # A symbolic channel axis (a string, or None) may well be 3.
    image_input = one_nchw and (
        inputs[0].shape[1] == 3 or not isinstance(inputs[0].shape[1], int)
    )
    detector_output = bool(outputs) and len(outputs[0].shape) == 3
    return "yolov8" if image_input and detector_output else "tensor"
