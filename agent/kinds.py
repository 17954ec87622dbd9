"""What differs between model kinds, for the daemon: one adapter per kind, in an explicit
registry. The service, the HTTP handlers and golden-set scoring ask the record's adapter
instead of testing what class its runner is.

``inference.kinds`` loads a kind's runner; this module knows what the daemon does with it: the
endpoint its requests go to, its description in ``/v1/models``, its tensor signature, its
labels, and how to score it on a golden set through its own queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import numpy as np

from inference.bundled import Bundle
from inference.evaluation import ScoredBox, accuracy, mean_average_precision
from inference.golden import load_detection_golden, load_tensor_golden
from inference.tensor import NUMPY_DTYPES, TensorModel, TensorSpec, tensor_specs
from inference.yolo import Detection, Thresholds, YoloV8Detector

if TYPE_CHECKING:
    from agent.records import VersionRecord

TENSOR_CHUNK = 32  # golden rows per infer call: live traffic interleaves between them

Signature = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]
# How a scorer reaches the record's queue (the service's detect and infer, bound to a record).
Detect = Callable[[bytes, Thresholds], Awaitable[list[Detection]]]
Infer = Callable[[dict[str, np.ndarray]], Awaitable[dict[str, np.ndarray]]]


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

    async def score(
        self, record: VersionRecord, bundle: Bundle, detect: Detect, infer: Infer
    ) -> float:
        """The golden-set score (mAP50 or accuracy), every item through the record's queue."""
        ...


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

    async def score(
        self, record: VersionRecord, bundle: Bundle, detect: Detect, infer: Infer
    ) -> float:
        scoring = bundle.sidecar["golden"].get("scoring", {})
        thresholds = Thresholds(conf=scoring.get("conf", 0.25), iou=scoring.get("iou", 0.7))
        frames = load_detection_golden(bundle.golden_path)
        predictions = []
        for frame in frames:
            found = await detect(frame.data, thresholds)
            predictions.append([ScoredBox(d.class_id, d.score, d.box) for d in found])
        return mean_average_precision([f.truths for f in frames], predictions).map


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

    async def score(
        self, record: VersionRecord, bundle: Bundle, detect: Detect, infer: Infer
    ) -> float:
        tensor = cast(TensorModel, record.runner)
        dtypes = {s.name: NUMPY_DTYPES[s.datatype] for s in tensor.inputs}
        golden = load_tensor_golden(bundle.golden_path, dtypes)
        first_output = tensor.outputs[0].name
        predicted = []
        for start in range(0, len(golden.labels), TENSOR_CHUNK):
            chunk = {k: v[start : start + TENSOR_CHUNK] for k, v in golden.inputs.items()}
            predicted.append((await infer(chunk))[first_output].argmax(axis=1))
        return accuracy(golden.labels, np.concatenate(predicted))


def kind_adapters() -> dict[str, KindAdapter]:
    """``kind`` -> its adapter (the same keys as ``inference.kinds.model_kinds``)."""
    return {"yolov8": DetectorKind(), "tensor": TensorKind()}
