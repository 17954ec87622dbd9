"""Score each model that has a golden set on this node, through the serving pipeline itself.

Runs once the models are ready, in the background, one golden sample at a time so live traffic
interleaves with it. The score is what ``edge_model_validation_score`` reports: on a node, not
at training time, so a wrong provider, a corrupt engine or a bad preprocessing build shows up as
a lower number. (Gating readiness and rollouts on it is the model lifecycle's job.)
"""

from __future__ import annotations

import logging
import time

import numpy as np

from agent.service import ModelService, ServedModel
from inference.bundled import BUNDLE_ROOT, Bundle, read_bundle
from inference.evaluation import ScoredBox, accuracy, mean_average_precision
from inference.golden import (
    load_detection_golden,
    load_tensor_golden,
    score_classifier,
    score_detections,
)
from inference.tensor import NUMPY_DTYPES, TensorModel
from inference.yolo import Thresholds, YoloV8Detector

log = logging.getLogger(__name__)
TENSOR_CHUNK = 32  # golden windows per infer call


def golden_bundle(served: ServedModel) -> Bundle | None:
    """The bundle whose golden set scores this model, if it has one."""
    if not served.settings.bundled:
        return None
    return read_bundle(BUNDLE_ROOT / served.settings.bundled)


async def validate_all(service: ModelService, idle_only: bool = False) -> None:
    """Score every model that has a golden set; ``idle_only``: skip models with work queued
    (the periodic re-validation must not compete with cameras)."""
    for served in service.models.values():
        if served.batcher is None or (idle_only and served.batcher.busy):
            continue
        try:
            bundle = golden_bundle(served)
            if bundle is None:
                continue
            score = await _score(service, served, bundle)
        except Exception as exc:  # a failed self-test is reported, it does not stop serving
            log.warning("golden-set validation failed",
                        extra={"model": served.settings.name, "error": str(exc)})
            continue
        served.validation_score = score
        served.validated_at = time.monotonic()
        log.info(
            "golden-set score",
            extra={"model": served.settings.name, "score": round(score, 4),
                   "recorded": bundle.golden_score},
        )


async def _score(service: ModelService, served: ServedModel, bundle: Bundle) -> float:
    name = served.settings.name
    if served.tensor is not None:
        dtypes = {s.name: NUMPY_DTYPES[s.datatype] for s in served.tensor.inputs}
        golden = load_tensor_golden(bundle.golden_path, dtypes)
        predicted = []
        for start in range(0, len(golden.labels), TENSOR_CHUNK):
            chunk = {k: v[start : start + TENSOR_CHUNK] for k, v in golden.inputs.items()}
            answer = await service.infer(name, chunk)
            first_output = served.tensor.outputs[0].name
            predicted.append(answer.outputs[first_output].argmax(axis=1))
        return accuracy(golden.labels, np.concatenate(predicted))
    thresholds = scoring_thresholds(bundle)
    frames = load_detection_golden(bundle.golden_path)
    predictions = []
    for frame in frames:
        result = await service.detect(
            name, frame.data, conf=thresholds.conf, iou=thresholds.iou
        )
        predictions.append([ScoredBox(d.class_id, d.score, d.box) for d in result.detections])
    return mean_average_precision([f.truths for f in frames], predictions).map


def score_servable(runner: object, bundle: Bundle) -> float:
    """A loaded version's golden-set score, run in the calling thread without the queue (for a
    candidate that is not serving yet). Same pre/post-processing code as the pipeline."""
    if isinstance(runner, TensorModel):
        tensor = runner
        dtypes = {s.name: NUMPY_DTYPES[s.datatype] for s in tensor.inputs}
        first_output = tensor.outputs[0].name

        def classify(inputs: dict[str, np.ndarray]) -> np.ndarray:
            (outputs,) = tensor.infer([inputs])
            return outputs[first_output].argmax(axis=1)

        return score_classifier(load_tensor_golden(bundle.golden_path, dtypes), classify)
    if isinstance(runner, YoloV8Detector):
        detector, thresholds = runner, scoring_thresholds(bundle)

        def detect(data: bytes) -> list[ScoredBox]:
            return [ScoredBox(d.class_id, d.score, d.box)
                    for d in detector.detect(data, thresholds)]

        return score_detections(load_detection_golden(bundle.golden_path), detect).map
    raise TypeError(f"cannot score a {type(runner).__name__}")


def scoring_thresholds(bundle: Bundle) -> Thresholds:
    """The conf/iou the golden score is defined at (recorded in the sidecar at training)."""
    scoring = bundle.sidecar["golden"].get("scoring", {})
    return Thresholds(conf=scoring.get("conf", 0.25), iou=scoring.get("iou", 0.7))
