"""Reading a frame out of a request: raw body or one multipart file part, within limits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import BodyPartReader, HttpVersion11, StreamReader, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from agent.errors import (
    BadRequestError,
    BodyTimeoutError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from agent.http import keys
from agent.http.errors import edge_error_response, error_response
from inference.errors import EdgeError

T = TypeVar("T")

IMAGE_TYPES = frozenset(
    {"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "application/octet-stream"}
)
_CHUNK = 64 * 1024


def check_headers(request: web.Request, max_bytes: int) -> None:
    """Refuse from the headers alone: before a byte of the body is read."""
    _check_content_type(request)
    check_length(request, max_bytes)


def _check_content_type(request: web.Request) -> None:
    ctype = request.content_type
    if ctype not in IMAGE_TYPES and ctype != "multipart/form-data":
        # curl --data-binary without -H sends application/x-www-form-urlencoded: say the fix.
        raise UnsupportedMediaTypeError(
            f"unsupported Content-Type {ctype!r}: send the image bytes as image/jpeg, "
            "image/png or application/octet-stream, or one file part of multipart/form-data "
            "(with curl: -H 'Content-Type: image/jpeg' --data-binary @frame.jpg)",
            {
                "accepted": sorted(IMAGE_TYPES | {"multipart/form-data"}),
                "header": "Content-Type: image/jpeg",
            },
        )


def check_length(request: web.Request, max_bytes: int) -> None:
    """A declared Content-Length over the limit is refused before the body is read."""
    length = request.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLargeError(
            f"body of {length} bytes is larger than the limit of {max_bytes}",
            {"max_bytes": max_bytes},
        )


def expect_handler(
    check: Callable[[web.Request, int], None],
) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """A route's ``Expect: 100-continue`` handler: the refusals that the headers alone decide
    (``check(request, max_body_bytes)``: size, type) are answered at once, without the interim
    100 that would invite the client to send a body nobody will read."""

    async def handle(request: web.Request) -> web.StreamResponse | None:
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect.lower() != "100-continue":
            resp = error_response(
                417, "the only expectation understood is 'Expect: 100-continue'",
                {"expect": expect[:64]},
            )
            resp.force_close()
            return resp
        try:
            check(request, request.app[keys.SETTINGS].limits.max_body_bytes)
        except EdgeError as exc:
            refused = edge_error_response(request, exc)
            refused.force_close()  # the body was never invited: nothing of it is read
            return refused
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # the interim answer is not the response
        return None

    return handle


class _Deadline:
    """The whole body must be in by ``timeout_s`` from now: a client dribbling a byte a second
    holds a connection and a buffer, so it gets a 408 rather than our patience."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.at = time.monotonic() + timeout_s

    async def __call__(self, step: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(step, max(0.0, self.at - time.monotonic()))
        except asyncio.TimeoutError:
            raise BodyTimeoutError(
                f"the body did not arrive within {self.timeout_s:g} s",
                {"body_timeout_s": self.timeout_s},
            ) from None


async def read_image(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The image bytes of a detect request (headers already passed :func:`check_headers`);
    stops reading as soon as the limit is passed or ``timeout_s`` is up."""
    deadline = _Deadline(timeout_s)
    if request.content_type == "multipart/form-data":
        data = await _read_multipart(request, max_bytes, deadline)
    else:
        data = await _read_stream(request.content, max_bytes, deadline)
    if not data:
        raise BadRequestError("empty body: send the image bytes")
    return data


async def read_body(request: web.Request, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, refused as soon as it passes ``max_bytes`` (chunked bodies too) or
    ``timeout_s`` is up."""
    data = await _read_stream(request.content, max_bytes, _Deadline(timeout_s))
    if not data:
        raise BadRequestError("empty body")
    return data


async def _read_stream(stream: StreamReader, max_bytes: int, deadline: _Deadline) -> bytes:
    buf = bytearray()
    while True:
        chunk = await deadline(stream.read(_CHUNK))
        if not chunk:
            return bytes(buf)
        buf += chunk
        if len(buf) > max_bytes:
            raise PayloadTooLargeError(
                f"body is larger than the limit of {max_bytes} bytes", {"max_bytes": max_bytes}
            )


async def _read_multipart(request: web.Request, max_bytes: int, deadline: _Deadline) -> bytes:
    try:
        reader = await request.multipart()
        while True:
            part = await deadline(reader.next())
            if part is None:
                raise BadRequestError("multipart body has no file part")
            if not isinstance(part, BodyPartReader):
                continue  # a nested multipart: not a file
            if part.filename is None and not part.headers.get("Content-Type", "").startswith(
                "image/"
            ):
                await deadline(part.release())  # a plain form field
                continue
            ptype = part.headers.get("Content-Type", "application/octet-stream").split(";")[0]
            if ptype.strip().lower() not in IMAGE_TYPES:
                raise UnsupportedMediaTypeError(f"unsupported file part type {ptype!r}")
            buf = bytearray()
            while chunk := await deadline(part.read_chunk(_CHUNK)):
                buf += chunk
                if len(buf) > max_bytes:
                    raise PayloadTooLargeError(
                        f"file part is larger than the limit of {max_bytes} bytes",
                        {"max_bytes": max_bytes},
                    )
            return bytes(buf)
    # aiohttp's malformed-multipart errors (a bad part header is an HttpProcessingError)
    except (ValueError, AssertionError, KeyError, HttpProcessingError) as exc:
        raise BadRequestError(f"malformed multipart body: {exc}") from exc
