"""Route handlers: parse and validate the request, call the service, serialise the answer."""

from __future__ import annotations

import logging
import time
from typing import TypeVar

from aiohttp import web

from agent.errors import BadRequestError, DrainingError
from agent.health import Liveness, check_liveness
from agent.http import keys
from agent.http.body import check_headers, read_image
from agent.service import DetectResult
from agent.strict_json import json_response

log = logging.getLogger(__name__)

MAX_CAMERA_ID = 128


async def detect(request: web.Request) -> web.Response:
    received_at = time.monotonic()
    app = request.app
    settings, service = app[keys.SETTINGS], app[keys.SERVICE]
    name = request.match_info["name"]
    request[keys.MODEL] = name
    camera = request[keys.CAMERA] = camera_id(request)
    conf = _query_number(request, "conf", float)
    iou = _query_number(request, "iou", float)
    max_det = _query_number(request, "max_det", int)
    deadline_s = deadline_from(request)
    # Everything that can refuse the request is checked before its body is read: an overloaded
    # node sheds a 300 KB frame without receiving it.
    if app[keys.SHUTDOWN].stopped:
        raise DrainingError("shutting down")
    limits = settings.limits
    check_headers(request, limits.max_body_bytes)
    # Admitted once: the answer names the version that computed it, whatever swaps meanwhile.
    record, ticket = service.admit(name, "yolov8")
    try:
        image = await read_image(request, limits.max_body_bytes, limits.body_timeout_s)
        result = await service.detect(
            record,
            image,
            conf=conf,
            iou=iou,
            max_det=max_det,
            deadline_s=deadline_s,
            received_at=received_at,
            ticket=ticket,
        )
    finally:
        ticket.release()
    request[keys.TIMING] = result.timing_s
    if settings.log_requests:
        log.info(
            "detect",
            extra={
                "model": name,
                "camera": camera,
                "detections": len(result.detections),
                "total_ms": round(result.timing_s["total"] * 1000, 2),
            },
        )
    return json_response(_detect_body(result))


def _detect_body(result: DetectResult) -> dict[str, object]:
    return {
        "model": result.record.model,
        "version": result.record.version,
        "image": {"width": result.width, "height": result.height},
        "detections": [d.as_dict() for d in result.detections],
        "timing_ms": {k: round(v * 1000, 3) for k, v in result.timing_s.items()},
    }


async def health(request: web.Request) -> web.Response:
    """Readiness: 200 only when every model is loaded and warmed up and we are not draining."""
    service, shutdown = request.app[keys.SERVICE], request.app[keys.SHUTDOWN]
    if shutdown.draining:
        return json_response({"status": "draining"}, status=503)
    if not service.ready():
        errors = {n: m.error for n, m in service.models.items() if m.error}
        # "failed": a model will not load without a new version or a restart; "loading": wait.
        return json_response(
            {
                "status": "failed" if service.failed() else "loading",
                "waiting_for": service.not_ready(),
                "errors": errors,
            },
            status=503,
        )
    return json_response({"status": "ready", "models": sorted(service.models)})


def liveness_of(app: web.Application) -> Liveness:
    """The health predicate for this app (also what the watchdogs are fed on)."""
    service = app[keys.SERVICE]
    return check_liveness(
        app[keys.SETTINGS].health,
        app[keys.LOOP_MONITOR],
        service.longest_run_s,
        service.silent_models,
    )


async def livez(request: web.Request) -> web.Response:
    state = liveness_of(request.app)
    return json_response(state.as_dict(), status=200 if state.live else 503)


async def list_models(request: web.Request) -> web.Response:
    service = request.app[keys.SERVICE]
    described = []
    for m in service.models.values():
        out = m.describe()
        shadow = service.shadows.get(m.name)
        if shadow is not None:
            out["shadow"] = shadow.describe()
        if service.rollbacks.get(m.name):
            out["rollbacks"] = service.rollbacks[m.name]
            out["last_rollback"] = service.last_rollback[m.name]
        described.append(out)
    return json_response({"models": described})


async def v2_live(request: web.Request) -> web.Response:
    state = liveness_of(request.app)
    return json_response({"live": state.live}, status=200 if state.live else 503)


async def v2_ready(request: web.Request) -> web.Response:
    ready = request.app[keys.SERVICE].ready() and not request.app[keys.SHUTDOWN].draining
    return json_response({"ready": ready}, status=200 if ready else 503)


Number = TypeVar("Number", int, float)


def _query_number(request: web.Request, key: str, kind: type[Number]) -> Number | None:
    raw = request.query.get(key)
    if raw is None or raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise BadRequestError(f"query parameter {key} must be {what}", {key: raw}) from None
    if isinstance(value, float) and value != value:  # NaN
        raise BadRequestError(f"query parameter {key} must be a number", {key: raw})
    return value


def camera_id(request: web.Request) -> str:
    """For logs: printable characters only (no forged log lines), bounded length."""
    raw = request.headers.get("X-Camera-Id", "")
    return "".join(c for c in raw if c.isprintable())[:MAX_CAMERA_ID]


def deadline_from(request: web.Request) -> float | None:
    """The ``X-Deadline-Ms`` header in seconds, if the client set one."""
    raw = request.headers.get("X-Deadline-Ms")
    if raw is None:
        return None
    try:
        ms = float(raw)
    except ValueError:
        raise BadRequestError("X-Deadline-Ms must be a number of milliseconds", raw) from None
    if not 0 < ms < 3_600_000:
        raise BadRequestError("X-Deadline-Ms must be in (0, 3600000)", raw)
    return ms / 1000
