"""``/metrics/summary``, ``/metrics``, and the middleware that records every model request."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from agent.http import keys
from agent.http.errors import Handler
from agent.metrics.accelerators import read_all
from agent.metrics.exposition import (
    ModelSnapshot,
    ShadowSnapshot,
    Snapshot,
    render_full,
    render_summary,
)
from agent.records import VersionRecord
from agent.service import ModelService


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: sees the final status of every model request, errors included."""
    response = await handler(request)
    model = request.get(keys.MODEL)
    if model is not None:
        recorder = request.app[keys.RECORDER]
        recorder.observe_request(
            model, response.status, request.get(keys.TIMING), request.get(keys.CAMERA, "")
        )
        reason = request.get(keys.REJECTION)
        if reason is not None:
            recorder.observe_rejection(model, reason)
    return response


def _model_snapshot(service: ModelService, name: str,
                    record: VersionRecord | None) -> ModelSnapshot:
    if record is None:  # not loaded (yet): no version to name
        return ModelSnapshot(name, "", "", "", 0, None)
    shadow = service.shadows.get(name)
    return ModelSnapshot(
        name=name,
        version=record.version,
        digest=f"sha256:{record.digest}",
        provider=record.provider,
        queue_depth=record.batcher.depth,
        validation_score=record.score,
        rollout=record.rollout,
        failed_batches=record.batcher.failed_batches,
        expired=record.batcher.expired,
        overload_episodes=record.batcher.overload_episodes,
        relayouts=record.batcher.relayouts,
        shadow=None if shadow is None else ShadowSnapshot(
            shadow.record.version, shadow.agreement, shadow.samples),
        rollbacks=service.rollbacks.get(name, 0),
        precision=record.precision_name,
    )


async def _snapshot(app: web.Application) -> Snapshot:
    service, shutdown = app[keys.SERVICE], app[keys.SHUTDOWN]
    models = [_model_snapshot(service, name, m.active) for name, m in service.models.items()]
    probes = app[keys.ACCELERATORS]
    # NVML calls are quick but are system calls into a driver: off the event loop.
    readings = await asyncio.to_thread(read_all, probes) if probes else []
    syncer = app.get(keys.SYNCER)
    control = (syncer.status.connected, syncer.status.last_success) if syncer else None
    return Snapshot(service.ready() and not shutdown.draining, models, readings, control)


async def summary(request: web.Request) -> web.Response:
    snap = await _snapshot(request.app)
    body = render_summary(request.app[keys.RECORDER], snap)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def full(request: web.Request) -> web.Response:
    snap = await _snapshot(request.app)
    body = render_full(request.app[keys.RECORDER], snap)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
