"""The core service (like MLServer's DataPlane): holds the models, answers detect requests.

HTTP handlers only parse and serialise; everything about models — loading, warm-up, readiness,
queues, the stages of a request — happens here.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.batcher import Batcher, RunTiming
from agent.errors import (
    BadRequestError,
    DrainingError,
    ModelNotFoundError,
    ModelNotReadyError,
    QueueFullError,
)
from agent.loading import LoadedVersion, load_version
from agent.settings import ModelSettings, Settings
from inference import (
    Detection,
    PreparedImage,
    Thresholds,
    YoloV8Detector,
)
from inference.kinds import AUTO, Servable
from inference.tensor import TensorModel, TensorSpec, tensor_specs

log = logging.getLogger(__name__)


class ModelState(str, enum.Enum):
    PENDING = "pending"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ServedModel:
    settings: ModelSettings
    kind: str = AUTO  # the settings' kind until a version loads: then what it really is
    state: ModelState = ModelState.PENDING
    source: str = "file"
    version: str = ""
    digest: str = ""
    provider: str = ""
    error: str | None = None
    validation_score: float | None = None  # on the golden set, measured on this node
    validated_at: float | None = None  # time.monotonic() of that measurement
    rollout: str = ""  # "stable" or "canary" once a fleet manifest assigned this node
    runner: Servable | None = None  # instance 0: the model's metadata
    batcher: Batcher[Any, Any] | None = None
    defaults: Thresholds = field(default_factory=Thresholds)

    @property
    def detector(self) -> YoloV8Detector | None:
        return self.runner if isinstance(self.runner, YoloV8Detector) else None

    @property
    def tensor(self) -> TensorModel | None:
        return self.runner if isinstance(self.runner, TensorModel) else None

    def signature(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """Input and output tensors (Open Inference Protocol metadata); empty until loaded."""
        if self.tensor is not None:
            return self.tensor.inputs, self.tensor.outputs
        if self.detector is not None:
            return tensor_specs(self.detector.loaded.session)
        return (), ()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.settings.name,
            "kind": self.kind,
            "version": self.version,
            "digest": f"sha256:{self.digest}" if self.digest else "",
            "state": self.state.value,
            "provider": self.provider,
            "source": self.source,
        }
        if self.rollout:
            out["rollout"] = self.rollout
        if self.validation_score is not None and self.validated_at is not None:
            out["validation"] = {
                "score": self.validation_score,
                "age_s": round(time.monotonic() - self.validated_at, 3),
            }
        if self.detector is not None:
            spec = self.detector.spec
            out["input"] = {
                "height": spec.input_h,
                "width": spec.input_w,
                "batch": spec.fixed_batch or "dynamic",
            }
            out["classes"] = [spec.names[i] for i in range(spec.num_classes)]
        if self.tensor is not None:
            out["inputs"] = [t.as_dict() for t in self.tensor.inputs]
            out["outputs"] = [t.as_dict() for t in self.tensor.outputs]
            if self.tensor.labels:
                out["labels"] = self.tensor.labels
        if self.batcher is not None:
            out["queue_depth"] = self.batcher.depth
            out["max_batch"] = self.batcher.max_batch
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class InferResult:
    model: ServedModel
    outputs: dict[str, np.ndarray]
    timing_s: dict[str, float]


@dataclass(frozen=True)
class DetectResult:
    model: ServedModel
    width: int
    height: int
    detections: list[Detection]
    timing_s: dict[str, float]


class ModelService:
    def __init__(
        self,
        settings: Settings,
        pre_pool: ThreadPoolExecutor,
        on_queue_depth: Callable[[str, int], None] | None = None,
    ) -> None:
        self.settings = settings
        self._pre_pool = pre_pool
        self._on_queue_depth = on_queue_depth
        self.clean_shutdown = True
        self.models: dict[str, ServedModel] = {
            m.name: ServedModel(
                m, kind=m.kind, source=m.source, defaults=Thresholds(m.conf, m.iou, m.max_det)
            )
            for m in settings.models
        }

    # -- lifecycle -------------------------------------------------------------------------
    async def load_all(self) -> None:
        """Load, warm up and start batching every model, one after another."""
        for served in self.models.values():
            await self._load(served)

    async def _load(self, served: ServedModel) -> None:
        cfg = served.settings
        served.state = ModelState.LOADING
        started = time.monotonic()
        log.info("loading model", extra={"model": cfg.name, "path": str(cfg.path)})

        def warming() -> None:
            served.state = ModelState.WARMING

        try:
            loaded = await load_version(
                self.settings, cfg, cfg.path, cfg.sha256, self.depth_observer(cfg.name), warming
            )
        except Exception as exc:  # any failure to load or warm up: this model is failed, not us
            what = "warm-up failed" if served.state is ModelState.WARMING else "load failed"
            served.state = ModelState.FAILED
            served.error = getattr(exc, "message", None) or f"{what}: {exc}"
            log.error("model failed to load", extra={"model": cfg.name, "error": served.error})
            return
        self.install(served, loaded, cfg.version or loaded.digest[:12])
        log.info(
            "model ready",
            extra={
                "model": cfg.name,
                "version": served.version,
                "provider": served.provider,
                "instances": loaded.instances,
                "max_batch": loaded.batcher.max_batch,
                "load_s": round(time.monotonic() - started, 3),
            },
        )

    def depth_observer(self, name: str) -> Callable[[int], None] | None:
        return functools.partial(self._on_queue_depth, name) if self._on_queue_depth else None

    def install(self, served: ServedModel, loaded: LoadedVersion, version: str) -> None:
        """Make ``loaded`` the version that answers: one synchronous step on the event loop, so
        a request sees either the old version or the new one, never a mix or a gap."""
        served.digest = loaded.digest
        served.kind = loaded.kind
        served.version = version
        served.runner = loaded.runner
        served.provider = loaded.runner.provider
        served.batcher = loaded.batcher
        served.error = None
        served.state = ModelState.READY

    async def close(self, timeout: float) -> None:
        """Drain every model's queue; ``clean_shutdown`` says whether all runs finished."""
        results = await asyncio.gather(
            *(m.batcher.close(timeout) for m in self.models.values() if m.batcher is not None)
        )
        self.clean_shutdown = all(results)

    # -- readiness -------------------------------------------------------------------------
    def ready(self) -> bool:
        return all(m.state is ModelState.READY for m in self.models.values())

    def failed(self) -> list[str]:
        """Models with no version serving because loading failed."""
        return [n for n, m in self.models.items() if m.state is ModelState.FAILED]

    def not_ready(self) -> dict[str, str]:
        return {n: m.state.value for n, m in self.models.items() if m.state is not ModelState.READY}

    def silent_models(self, max_silence_s: float) -> dict[str, float]:
        """Ready models whose last batch came back more than ``max_silence_s`` ago."""
        now = time.monotonic()
        out = {}
        for name, m in self.models.items():
            if m.batcher is not None and now - m.batcher.last_completed_at > max_silence_s:
                out[name] = now - m.batcher.last_completed_at
        return out

    async def self_test(self, name: str) -> bool:
        """One synthetic input through the model's queue and thread, like a request.

        False when the queue is full (real batches are proof enough) or draining."""
        served = self.get(name)
        if served.batcher is None or served.runner is None:
            return False
        try:
            slot = served.batcher.reserve()
        except (QueueFullError, DrainingError):
            return False
        try:
            await served.batcher.submit(slot, served.runner.sample_input())
        finally:
            slot.release()
        return True

    def longest_run_s(self) -> float:
        now = time.monotonic()
        return max(
            (m.batcher.longest_run_s(now) for m in self.models.values() if m.batcher is not None),
            default=0.0,
        )

    # -- requests --------------------------------------------------------------------------
    def get(self, name: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise ModelNotFoundError(f"no model named {name!r}", {"models": sorted(self.models)})
        return served

    def check_admission(self, name: str, kind: str | None = None) -> ServedModel:
        """Fail fast — before the body is read — when the request cannot be served."""
        served = self.get(name)
        if served.batcher is None and served.state is ModelState.FAILED:
            # Its kind may never have been known: say what is wrong, not which endpoint to use.
            raise ModelNotReadyError(
                f"model {name!r} failed to load: {served.error}",
                {"state": served.state.value, "error": served.error},
            )
        if kind is not None and served.kind not in (kind, AUTO):
            endpoint = "detect" if served.kind == "yolov8" else "infer"
            version = "v1" if endpoint == "detect" else "v2"
            raise BadRequestError(
                f"model {name!r} is a {served.kind} model: "
                f"use POST /{version}/models/{name}/{endpoint}",
                {"kind": served.kind},
            )
        if served.batcher is None:
            raise ModelNotReadyError(
                f"model {name!r} is {served.state.value}",
                {"state": served.state.value, "error": served.error},
            )
        served.batcher.check_room()
        return served

    async def detect(
        self,
        name: str,
        image: bytes,
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        deadline_s: float | None = None,
        received_at: float | None = None,
    ) -> DetectResult:
        received_at = time.monotonic() if received_at is None else received_at
        served = self.check_admission(name, "yolov8")
        assert served.batcher is not None
        assert served.detector is not None
        d = served.defaults
        thresholds = Thresholds(
            d.conf if conf is None else conf,
            d.iou if iou is None else iou,
            d.max_det if max_det is None else max_det,
        )
        deadline = self._deadline(served, received_at, deadline_s)
        detector, batcher = served.detector, served.batcher
        loop = asyncio.get_running_loop()
        slot = batcher.reserve()
        try:
            t0 = time.monotonic()
            prepared: PreparedImage = await loop.run_in_executor(
                self._pre_pool, detector.preprocess, image, self.settings.limits.max_image_pixels
            )
            t1 = time.monotonic()
            raw, run = await batcher.submit(slot, prepared.blob, deadline)
            t2 = time.monotonic()
            detections = await loop.run_in_executor(
                self._pre_pool, detector.postprocess, raw, prepared, thresholds
            )
            t3 = time.monotonic()
        finally:
            slot.release()
        return DetectResult(
            served,
            prepared.width,
            prepared.height,
            detections,
            {
                "queue": run.queue_s,
                "preprocess": t1 - t0,
                "inference": run.inference_s,
                "postprocess": t3 - t2,
                "total": t3 - received_at,
            },
        )

    async def infer(
        self,
        name: str,
        inputs: dict[str, np.ndarray],
        *,
        deadline_s: float | None = None,
        received_at: float | None = None,
    ) -> InferResult:
        """One Open Inference Protocol request through the model's batching queue."""
        received_at = time.monotonic() if received_at is None else received_at
        served = self.check_admission(name, "tensor")
        assert served.batcher is not None
        assert served.tensor is not None
        tensors = served.tensor.validate(inputs)
        deadline = self._deadline(served, received_at, deadline_s)
        slot = served.batcher.reserve()
        try:
            outputs, run = await served.batcher.submit(slot, tensors, deadline)
        finally:
            slot.release()
        return InferResult(served, outputs, _timing(run, received_at))

    def _deadline(
        self, served: ServedModel, received_at: float, deadline_s: float | None
    ) -> float | None:
        batching = self.settings.batching_for(served.settings)
        if deadline_s is None and batching.deadline_ms > 0:
            deadline_s = batching.deadline_ms / 1000
        return received_at + deadline_s if deadline_s else None


def _timing(run: RunTiming, received_at: float) -> dict[str, float]:
    return {
        "queue": run.queue_s,
        "inference": run.inference_s,
        "total": time.monotonic() - received_at,
    }
