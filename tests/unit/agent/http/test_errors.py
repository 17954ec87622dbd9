from __future__ import annotations

import pytest
from aiohttp import web

from agent.errors import (
    BadRequestError,
    DeadlineExceededError,
    DrainingError,
    InferenceFailedError,
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    QueueFullError,
    UnsupportedMediaTypeError,
)
from agent.http.errors import error_middleware
from inference.errors import (
    EdgeError,
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedImageFormatError,
)
from inference.yolo import InvalidThresholdError

CASES = [
    (BadRequestError("x"), 400),
    (InvalidThresholdError("x"), 400),
    (InvalidImageError("x"), 400),
    (ModelNotFoundError("x"), 404),
    (PayloadTooLargeError("x"), 413),
    (ImageTooLargeError("x"), 413),
    (UnsupportedMediaTypeError("x"), 415),
    (UnsupportedImageFormatError("x"), 415),
    (ModelNotReadyError("x"), 503),
    (QueueFullError("x"), 503),
    (DrainingError("x"), 503),
    (DeadlineExceededError("x"), 504),
    (InferenceFailedError("x"), 500),
    (EdgeError("x"), 500),
]


@pytest.fixture
async def client(aiohttp_client):
    async def boom(request: web.Request) -> web.Response:
        index = int(request.match_info["i"])
        if index < len(CASES):
            raise CASES[index][0]
        raise KeyError("secret internals")

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/{i}", boom)
    return await aiohttp_client(app)


@pytest.mark.parametrize("index", range(len(CASES)))
async def test_each_error_maps_to_its_status_as_json(client, index):
    status = CASES[index][1]
    resp = await client.get(f"/{index}")
    assert resp.status == status
    assert await resp.json() == {"error": "x", "detail": None}
    assert ("Retry-After" in resp.headers) == (status == 503)


async def test_an_unexpected_exception_is_a_500_that_leaks_nothing(client):
    resp = await client.get(f"/{len(CASES)}")
    assert resp.status == 500
    body = await resp.json()
    assert body == {"error": "internal error", "detail": None}
