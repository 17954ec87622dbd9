"""What differs between model kinds, for the daemon: one adapter per kind, in an explicit
registry. The service, the HTTP handlers and golden-set scoring ask the record's adapter
instead of testing what class its runner is.

``inference.kinds`` loads a kind's runner; this module knows what the daemon does with it: the
endpoint its requests go to, its description in ``/v1/models``, its tensor signature, its
labels, and how to score it on a golden set through the serving pipeline (its queue, or its
runner directly for a candidate and ``edge-agent model score``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, cast

import numpy as np

from inference.errors import (
    GoldenSetError,
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedImageFormatError,
)
from inference.evaluation import ScoredBox
from inference.golden import (
    METRICS,
    GoldenSpec,
    check_classes,
    detection_score,
    load_detection_golden,
    read_tensor_golden,
    row_chunks,
    tensor_score,
)
from inference.tensor import TensorInputError, TensorModel, TensorSpec, tensor_specs
from inference.yolo import Detection, Thresholds, YoloV8Detector

TENSOR_CHUNK = 32  # golden rows per infer call: live traffic interleaves between them

Signature = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]
# How a scorer reaches a version: through its queue (the service's detect and infer, bound to
# its record), or straight on its runner (a candidate, the ``model score`` command).
Detect = Callable[[bytes, Thresholds], Awaitable[list[Detection]]]
Infer = Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]
Progress = Callable[[int, int], None]  # items done, items in all


class KindAdapter(Protocol):
    name: str  # as in settings and sidecars
    endpoint: str  # the request a model of this kind answers, with {name}

    def labels(self, runner: Any) -> tuple[str, ...]: ...

    def describe(self, runner: Any) -> dict[str, Any]:
        """The kind's own fields of ``/v1/models``."""
        ...

    def signature(self, runner: Any) -> Signature:
        """Input and output tensors (Open Inference Protocol metadata)."""
        ...

    async def score(self, runner: Any, golden: GoldenSpec, detect: Detect, infer: Infer,
                    progress: Progress | None = None) -> float:
        """The golden-set score (mAP50 or accuracy), every item through ``detect``/``infer``
        (the serving pipeline); a set that does not fit the model: GoldenSetError."""
        ...


def _check_metric(kind: str, golden: GoldenSpec) -> None:
    if golden.metric != METRICS[kind]:
        raise GoldenSetError(f"golden set {golden.label}: metric {golden.metric!r} does not "
                             f"score a {kind} model (its metric is {METRICS[kind]!r})")


class DetectorKind:
    name = "yolov8"
    endpoint = "POST /v1/models/{name}/detect"

    def labels(self, runner: Any) -> tuple[str, ...]:
        names = cast(YoloV8Detector, runner).spec.names
        return tuple(names[i] for i in range(len(names)))

    def describe(self, runner: Any) -> dict[str, Any]:
        spec = cast(YoloV8Detector, runner).spec
        return {
            "input": {
                "height": spec.input_h,
                "width": spec.input_w,
                "batch": spec.fixed_batch or "dynamic",
            },
            "classes": list(self.labels(runner)),
        }

    def signature(self, runner: Any) -> Signature:
        return tensor_specs(cast(YoloV8Detector, runner).loaded.session)

    async def score(self, runner: Any, golden: GoldenSpec, detect: Detect, infer: Infer,
                    progress: Progress | None = None) -> float:
        _check_metric(self.name, golden)
        where = golden.label
        frames = await asyncio.to_thread(load_detection_golden, golden.path, where)
        check_classes(frames, len(self.labels(runner)), where)
        thresholds = Thresholds(conf=golden.setting("conf"), iou=golden.setting("iou"))
        predictions = []
        for done, frame in enumerate(frames, 1):
            try:
                found = await detect(frame.data, thresholds)
            except (InvalidImageError, UnsupportedImageFormatError, ImageTooLargeError) as exc:
                raise GoldenSetError(f"golden set {where}: image {frame.image} is unreadable: "
                                     f"{exc.message}") from exc
            predictions.append([ScoredBox(d.class_id, d.score, d.box) for d in found])
            if progress is not None:
                progress(done, len(frames))
        return detection_score(frames, predictions).map


class TensorKind:
    name = "tensor"
    endpoint = "POST /v2/models/{name}/infer"

    def labels(self, runner: Any) -> tuple[str, ...]:
        return tuple(cast(TensorModel, runner).labels)

    def describe(self, runner: Any) -> dict[str, Any]:
        tensor = cast(TensorModel, runner)
        out: dict[str, Any] = {
            "inputs": [t.as_dict() for t in tensor.inputs],
            "outputs": [t.as_dict() for t in tensor.outputs],
        }
        if tensor.labels:
            out["labels"] = tensor.labels
        return out

    def signature(self, runner: Any) -> Signature:
        tensor = cast(TensorModel, runner)
        return tensor.inputs, tensor.outputs

    async def score(self, runner: Any, golden: GoldenSpec, detect: Detect, infer: Infer,
                    progress: Progress | None = None) -> float:
        _check_metric(self.name, golden)
        tensor = cast(TensorModel, runner)
        rows = await asyncio.to_thread(read_tensor_golden, golden.path, tensor.inputs,
                                       tensor.outputs, golden.label)
        outputs: dict[str, list[np.ndarray]] = {}
        for chunk in row_chunks(rows.rows, TENSOR_CHUNK if tensor.batched else 1):
            try:
                got = await infer({k: v[chunk] for k, v in rows.inputs.items()})
            except TensorInputError as exc:
                raise GoldenSetError(f"golden set {golden.label}: {exc.message}",
                                     exc.detail) from exc
            for name, value in got.items():
                outputs.setdefault(name, []).append(value)
            if progress is not None:
                progress(min(chunk.stop, rows.rows), rows.rows)
        merged = {name: np.concatenate(parts) for name, parts in outputs.items()}
        return tensor_score(rows, merged, tensor.outputs[0].name, golden.setting("rtol"),
                            golden.setting("atol"), golden.label)


def direct_scoring(runner: Any) -> tuple[Detect, Infer]:
    """Scoring straight on a runner in a worker thread, through the same pre/post-processing
    as a request (what a candidate is gated with, and what ``edge-agent model score`` runs)."""

    async def detect(image: bytes, thresholds: Thresholds) -> list[Detection]:
        return await asyncio.to_thread(cast(YoloV8Detector, runner).detect, image, thresholds)

    async def infer(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensor = cast(TensorModel, runner)
        (outputs,) = await asyncio.to_thread(tensor.infer, [tensor.validate(inputs)])
        return outputs

    return detect, infer


def kind_adapters() -> dict[str, KindAdapter]:
    """``kind`` -> its adapter (the same keys as ``inference.kinds.model_kinds``)."""
    return {"yolov8": DetectorKind(), "tensor": TensorKind()}
