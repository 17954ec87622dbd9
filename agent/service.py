"""The core service (like MLServer's DataPlane): holds the models, answers requests.

HTTP handlers only parse and serialise; everything about models — loading, warm-up, readiness,
queues, the stages of a request — happens here. Each model holds one reference to the
immutable record of its active version (:mod:`agent.records`); this service is the only
writer of that reference, and a request works on the record it was admitted with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from agent.batcher import RunTiming, Ticket
from agent.errors import (
    BadRequestError,
    DrainingError,
    ModelNotFoundError,
    ModelNotReadyError,
    QueueFullError,
)
from agent.kinds import direct_scoring, kind_adapters
from agent.loading import VersionSpec, load_version, spec_from_settings
from agent.records import LoadState, Model, VersionRecord
from agent.settings import Settings
from agent.shadow import Shadow
from inference import Detection, PreparedImage, Thresholds, YoloV8Detector
from inference.agreement import argmax_agreement, detection_agreement
from inference.golden import GoldenSpec
from inference.kinds import AUTO
from inference.tensor import TensorModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InferResult:
    record: VersionRecord  # the version that computed it
    outputs: dict[str, np.ndarray]
    timing_s: dict[str, float]


@dataclass(frozen=True)
class DetectResult:
    record: VersionRecord  # the version that computed it
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
        self.models: dict[str, Model] = {m.name: Model(m) for m in settings.models}
        self._first: dict[str, VersionSpec] = {}  # what to load first, where not the settings'
        # Second versions loaded beside the active ones (agent.models.bake adds and removes
        # them); empty: shadow runs cost one emptiness check per request.
        self.shadows: dict[str, Shadow] = {}
        self.rollbacks: dict[str, int] = {}  # per model, since start
        self.last_rollback: dict[str, dict[str, Any]] = {}  # per model: version, why

    # -- loading and publishing ----------------------------------------------------------
    def start_from(self, name: str, spec: VersionSpec) -> None:
        """Load ``spec`` first instead of the settings' version (the cache's last-known-good)."""
        self._first[name] = spec

    async def load_all(self) -> None:
        """Load, warm up and start batching every model, one after another."""
        for model in self.models.values():
            await self._load(model)

    async def _load(self, model: Model) -> None:
        cfg = model.settings
        model.state = LoadState.LOADING
        started = time.monotonic()

        def warming() -> None:
            model.state = LoadState.WARMING

        try:
            spec = self._first.get(cfg.name) or spec_from_settings(cfg)
            log.info("loading model", extra={"model": cfg.name, "path": str(spec.path)})
            loaded = await load_version(
                self.settings, cfg, spec, self.depth_observer(cfg.name), warming
            )
        except Exception as exc:  # any failure to load or warm up: this model is failed, not us
            what = "warm-up failed" if model.state is LoadState.WARMING else "load failed"
            model.state = LoadState.FAILED
            model.error = getattr(exc, "message", None) or f"{what}: {exc}"
            log.error("model failed to load", extra={"model": cfg.name, "error": model.error})
            return
        record = self.publish(loaded.record(cfg, spec))
        log.info(
            "model ready",
            extra={
                "model": cfg.name,
                "version": record.version,
                "provider": record.provider,
                "instances": loaded.instances,
                "max_batch": loaded.batcher.max_batch,
                "load_s": round(time.monotonic() - started, 3),
            },
        )

    def depth_observer(self, name: str) -> Callable[[int], None] | None:
        return functools.partial(self._on_queue_depth, name) if self._on_queue_depth else None

    def publish(self, record: VersionRecord) -> VersionRecord:
        """Make ``record`` the version that answers: one assignment on the event loop, so a
        request is admitted to either the old record or the new one, never a mix or a gap."""
        model = self.models[record.model]
        model.active = record
        model.error = None
        model.state = LoadState.READY
        return record

    def revise(self, record: VersionRecord, **changes: Any) -> VersionRecord | None:
        """Publish the active record with ``changes`` (rollout, source, score) if ``record``'s
        version (its queue) is still the active one; None if another version replaced it
        meanwhile. The changes apply to the record as published now: a score measured while a
        sync re-published the version with its rollout keeps both."""
        current = self.models[record.model].active
        if current is None or current.batcher is not record.batcher:
            return None
        return self.publish(dataclasses.replace(current, **changes))

    def active(self) -> list[VersionRecord]:
        return [m.active for m in self.models.values() if m.active is not None]

    async def close(self, timeout: float) -> None:
        """Drain every model's queue; ``clean_shutdown`` says whether all runs finished."""
        results = await asyncio.gather(*(r.batcher.close(timeout) for r in self.active()))
        self.clean_shutdown = all(results)

    # -- readiness -------------------------------------------------------------------------
    def ready(self) -> bool:
        return all(m.state is LoadState.READY for m in self.models.values())

    def failed(self) -> list[str]:
        """Models with no version serving because loading failed."""
        return [n for n, m in self.models.items() if m.state is LoadState.FAILED]

    def not_ready(self) -> dict[str, str]:
        return {n: m.state.value for n, m in self.models.items() if m.state is not LoadState.READY}

    def silent_models(self, max_silence_s: float) -> dict[str, float]:
        """Ready models whose last batch came back more than ``max_silence_s`` ago."""
        now = time.monotonic()
        silent = {r.model: now - r.batcher.last_completed_at for r in self.active()}
        return {name: s for name, s in silent.items() if s > max_silence_s}

    async def self_test(self, name: str) -> bool:
        """One synthetic input through the model's queue and thread, like a request.

        False when the queue is full (real batches are proof enough) or draining."""
        record = self.get(name).active
        if record is None:
            return False
        try:
            slot = record.batcher.reserve()
        except (QueueFullError, DrainingError):
            return False
        try:
            await record.batcher.submit(slot, record.runner.sample_input())
        finally:
            slot.release()
        return True

    def longest_run_s(self) -> float:
        now = time.monotonic()
        return max((r.batcher.longest_run_s(now) for r in self.active()), default=0.0)

    # -- requests --------------------------------------------------------------------------
    def get(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            raise ModelNotFoundError(f"no model named {name!r}", {"models": sorted(self.models)})
        return model

    def admit(
        self, name: str, kind: str, version: str | None = None
    ) -> tuple[VersionRecord, Ticket]:
        """The record a request of ``kind`` (for ``version``, if it names one) will be served
        by, checked once, before the body is read: fails fast when it cannot be served. The
        ticket keeps that version's queue open for it through a swap (release it if the
        request ends before :meth:`detect` or :meth:`infer` takes it)."""
        model = self.get(name)
        record = model.active
        check_version(model, record, version)
        if record is None and model.state is LoadState.FAILED:
            # Its kind may never have been known: say what is wrong, not which endpoint to use.
            raise ModelNotReadyError(
                f"model {name!r} failed to load: {model.error}",
                {"state": model.state.value, "error": model.error},
            )
        if model.kind not in (kind, AUTO):
            endpoint = kind_adapters()[model.kind].endpoint
            raise BadRequestError(
                f"model {name!r} is a {model.kind} model: use {endpoint.format(name=name)}",
                {"kind": model.kind},
            )
        if record is None:
            raise ModelNotReadyError(
                f"model {name!r} is {model.state.value}",
                {"state": model.state.value, "error": model.error},
            )
        return record, record.batcher.admit()

    async def detect(
        self,
        record: VersionRecord,
        image: bytes,
        *,
        conf: float | None = None,
        iou: float | None = None,
        max_det: int | None = None,
        deadline_s: float | None = None,
        received_at: float | None = None,
        ticket: Ticket | None = None,
        live: bool = True,
    ) -> DetectResult:
        """One image through ``record``'s version (admitted for "yolov8"). ``live``: a
        camera's frame, which a shadow may sample (a golden-set item is not one)."""
        received_at = time.monotonic() if received_at is None else received_at
        detector = cast(YoloV8Detector, record.runner)
        d = record.defaults
        thresholds = Thresholds(
            d.conf if conf is None else conf,
            d.iou if iou is None else iou,
            d.max_det if max_det is None else max_det,
        )
        deadline = self._deadline(record, received_at, deadline_s)
        batcher = record.batcher
        loop = asyncio.get_running_loop()
        slot = batcher.reserve(ticket)
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
        if self.shadows and live:
            self._shadow_detect(record, image, thresholds, detections)
        return DetectResult(
            record,
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
        record: VersionRecord,
        inputs: dict[str, np.ndarray],
        *,
        deadline_s: float | None = None,
        received_at: float | None = None,
        ticket: Ticket | None = None,
        live: bool = True,
    ) -> InferResult:
        """One Open Inference Protocol request through ``record``'s queue (admitted for
        "tensor")."""
        received_at = time.monotonic() if received_at is None else received_at
        tensors = cast(TensorModel, record.runner).validate(inputs)
        deadline = self._deadline(record, received_at, deadline_s)
        slot = record.batcher.reserve(ticket)
        try:
            outputs, run = await record.batcher.submit(slot, tensors, deadline)
        finally:
            slot.release()
        if self.shadows and live:
            self._shadow_infer(record, tensors, outputs)
        return InferResult(record, outputs, _timing(run, received_at))

    # -- shadow runs (agent.shadow): after the live answer, never before it ------------------
    def _shadow_detect(self, live: VersionRecord, image: bytes, thresholds: Thresholds,
                       detections: list[Detection]) -> None:
        shadow = self.shadows.get(live.model)
        if shadow is None or not shadow.take(live):
            return
        # At the model's conf, or the request's where higher: both sides at the same one.
        conf = max(thresholds.conf, live.defaults.conf)
        at = Thresholds(conf, thresholds.iou, thresholds.max_det)
        mine = [d for d in detections if d.score >= conf]
        detector = cast(YoloV8Detector, shadow.runner)
        max_pixels = self.settings.limits.max_image_pixels

        def run() -> list[Detection]:
            prepared = detector.preprocess(image, max_pixels)
            raw = detector.infer([prepared.blob])[0]
            return detector.postprocess(raw, prepared, at)

        async def compare() -> float:
            return detection_agreement(mine, await shadow.call(run))

        shadow.run(compare)

    def _shadow_infer(self, live: VersionRecord, tensors: dict[str, np.ndarray],
                      outputs: dict[str, np.ndarray]) -> None:
        shadow = self.shadows.get(live.model)
        if shadow is None or not shadow.take(live):
            return
        model = cast(TensorModel, shadow.runner)
        first = cast(TensorModel, live.runner).outputs[0].name

        def run() -> dict[str, np.ndarray]:
            return model.infer([model.validate(tensors)])[0]

        async def compare() -> float:
            other = (await shadow.call(run)).get(first)
            return 0.0 if other is None else argmax_agreement(outputs[first], other)

        shadow.run(compare)

    async def score(self, record: VersionRecord, golden: GoldenSpec, queued: bool = True) -> float:
        """``record``'s score on ``golden``. ``queued``: every item through its queue like a
        request (a live version: traffic interleaves, the whole pipeline is proven); else
        straight on its runner in a worker thread (a candidate, or a version scored for a
        gate: never refused by the queue's admission under load)."""
        if not queued:
            detect, infer = direct_scoring(record.runner)
            return await record.kind.score(record.runner, golden, detect, infer)

        async def detect_queued(image: bytes, thresholds: Thresholds) -> list[Detection]:
            result = await self.detect(record, image, conf=thresholds.conf, iou=thresholds.iou,
                                       live=False)
            return result.detections

        async def infer_queued(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return (await self.infer(record, inputs, live=False)).outputs

        return await record.kind.score(record.runner, golden, detect_queued, infer_queued)

    def _deadline(
        self, record: VersionRecord, received_at: float, deadline_s: float | None
    ) -> float | None:
        batching = self.settings.batching_for(self.models[record.model].settings)
        if deadline_s is None and batching.deadline_ms > 0:
            deadline_s = batching.deadline_ms / 1000
        return received_at + deadline_s if deadline_s else None


def check_version(model: Model, record: VersionRecord | None, version: str | None) -> None:
    """A request that names a version (``/v2/models/{name}/versions/{version}/...``) is for
    the one that serves, or 404."""
    if version is not None and (record is None or version != record.version):
        raise ModelNotFoundError(
            f"model {model.name!r} has no version {version!r}",
            {"versions": [record.version] if record is not None else []},
        )


def _timing(run: RunTiming, received_at: float) -> dict[str, float]:
    return {
        "queue": run.queue_s,
        "inference": run.inference_s,
        "total": time.monotonic() - received_at,
    }
