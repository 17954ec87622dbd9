"""Every error -> HTTP status, in one place, as JSON ``{"error": ..., "detail": ...}``."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable

from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from agent.errors import (
    AdminDisabledError,
    BadRequestError,
    BodyTimeoutError,
    ConflictError,
    DeadlineExceededError,
    DrainingError,
    InferenceFailedError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    QueueFullError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from agent.http import keys
from agent.models.swap import SwapRejectedError
from agent.strict_json import json_response
from inference.errors import (
    EdgeError,
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedImageFormatError,
)
from inference.tensor import TensorInputError
from inference.yolo import InvalidThresholdError

log = logging.getLogger(__name__)

# Checked in order: the first matching class decides the status and the rejection reason
# (the ``reason`` label of ``edge_requests_rejected_total``).
STATUS: tuple[tuple[type[EdgeError], int, str], ...] = (
    (BadRequestError, 400, "bad_request"),
    (InvalidThresholdError, 400, "bad_request"),
    (InvalidImageError, 400, "bad_image"),
    (TensorInputError, 400, "bad_tensor"),
    (ModelNotFoundError, 404, "not_found"),
    (AdminDisabledError, 404, "not_found"),
    (UnauthorizedError, 401, "unauthorized"),
    (ConflictError, 409, "conflict"),
    (SwapRejectedError, 409, "rejected"),
    (BodyTimeoutError, 408, "body_timeout"),
    (PayloadTooLargeError, 413, "too_large"),
    (ImageTooLargeError, 413, "too_large"),
    (UnsupportedMediaTypeError, 415, "unsupported_media_type"),
    (UnsupportedImageFormatError, 415, "unsupported_media_type"),
    (ModelNotReadyError, 503, "not_ready"),
    (QueueFullError, 503, "queue_full"),
    (DrainingError, 503, "draining"),
    (DeadlineExceededError, 504, "deadline"),
    (InferenceFailedError, 500, "inference_failed"),
)


# Refusals that may leave a body half-read on the socket.
_BODY_LEFT_UNREAD = frozenset({408, 413})


def status_for(exc: EdgeError) -> tuple[int, str]:
    for cls, status, reason in STATUS:
        if isinstance(exc, cls):
            return status, reason
    return 500, "internal"


def error_response(
    status: int, message: str, detail: object = None, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"error": message, "detail": detail}, status=status, headers=headers)


def _retry_after(exc: EdgeError) -> dict[str, str]:
    seconds = getattr(exc, "retry_after_s", 1.0)
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def edge_error_response(request: web.Request, exc: EdgeError) -> web.Response:
    """The answer to one of the project's errors (also used before the body is invited)."""
    status, reason = status_for(exc)
    request[keys.REJECTION] = reason
    headers = _retry_after(exc) if status == 503 else None
    # Refusals (503 shed, 504 deadline) are counted, not logged: under overload a line per
    # refused frame would be hundreds a second.
    if status >= 500 and status not in (503, 504):
        log.warning(
            "request failed",
            extra={"path": request.path, "status": status, "error": exc.message},
        )
    resp = error_response(status, exc.message, exc.detail, headers)
    if status in _BODY_LEFT_UNREAD:
        # The rest of the body is not wanted: close instead of reading it to the end.
        resp.force_close()
    return resp


async def _settle_unread_body(request: web.Request, resp: web.StreamResponse) -> None:
    """A refusal answered before the body was read: a client that sends the whole body before
    reading the answer (most do) would see the connection reset when it closes with its data
    unread. A declared body up to ``limits.refusal_drain_bytes`` (a camera frame) is read and
    discarded, within ``limits.body_timeout_s``, and the connection kept; anything else (bigger,
    chunked, too slow) is answered with ``Connection: close``."""
    if resp.keep_alive is False or not request.body_exists or request.content.is_eof():
        return
    limits = request.app[keys.SETTINGS].limits
    length = request.content_length
    if length is None or length > limits.refusal_drain_bytes:
        resp.force_close()
        return
    try:
        await asyncio.wait_for(_discard(request.content), limits.body_timeout_s)
    except (asyncio.TimeoutError, ConnectionError, HttpProcessingError):
        resp.force_close()


async def _discard(stream: StreamReader) -> None:
    while await stream.readany():
        pass


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EdgeError as exc:
        resp = edge_error_response(request, exc)
        await _settle_unread_body(request, resp)
        return resp
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        # aiohttp's own refusals (404 route, 405 method, 413 client_max_size) as JSON too.
        return error_response(
            exc.status,
            exc.reason,
            None,
            {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")},
        )
    except Exception:
        request[keys.REJECTION] = "internal"
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "internal error")
