"""Open Inference Protocol (KServe v2) handlers: infer, model metadata and readiness."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from agent import __version__
from agent.errors import DrainingError, ModelNotFoundError
from agent.http import keys
from agent.http.body import check_length, read_body
from agent.http.handlers import camera_id, deadline_from
from agent.http.oip import (
    HEADER_LENGTH,
    encode_infer_response,
    parse_infer_request,
    select_outputs,
)
from agent.service import ServedModel
from agent.strict_json import json_response
from inference.tensor import TensorSpec

EXTENSIONS = ["binary_tensor_data"]


async def server_metadata(request: web.Request) -> web.Response:
    return json_response(
        {"name": "edge-agent", "version": __version__, "extensions": EXTENSIONS}
    )


def _served(request: web.Request) -> ServedModel:
    served = request.app[keys.SERVICE].get(request.match_info["name"])
    version = request.match_info.get("version")
    if version is not None and version != served.version:
        raise ModelNotFoundError(
            f"model {served.settings.name!r} has no version {version!r}",
            {"versions": [served.version] if served.version else []},
        )
    return served


async def model_metadata(request: web.Request) -> web.Response:
    served = _served(request)
    inputs, outputs = served.signature()
    parameters: dict[str, object] = {"kind": served.kind, "state": served.state.value}
    if served.tensor is not None and served.tensor.labels:
        parameters["labels"] = served.tensor.labels
    body: dict[str, object] = {
        "name": served.settings.name,
        "versions": [served.version] if served.version else [],
        "platform": "onnxruntime_onnx",
        "inputs": [t.as_dict() for t in inputs],
        "outputs": [t.as_dict() for t in outputs],
        "parameters": parameters,
    }
    return json_response(body)


async def model_ready(request: web.Request) -> web.Response:
    served = _served(request)
    ready = served.batcher is not None and not request.app[keys.LIFECYCLE].draining
    return json_response(
        {"name": served.settings.name, "ready": ready}, status=200 if ready else 503
    )


async def infer(request: web.Request) -> web.Response:
    received_at = time.monotonic()
    app = request.app
    settings, service = app[keys.SETTINGS], app[keys.SERVICE]
    if app[keys.LIFECYCLE].stopped:
        raise DrainingError("shutting down")
    request[keys.MODEL] = request.match_info["name"]
    request[keys.CAMERA] = camera_id(request)
    served = _served(request)
    name = served.settings.name
    deadline_s = deadline_from(request)
    check_length(request, settings.limits.max_body_bytes)
    service.check_admission(name, "tensor")
    body = await read_body(
        request, settings.limits.max_body_bytes, settings.limits.body_timeout_s
    )
    # A JSON body of megabytes takes a while to parse: not on the event loop.
    parsed = await asyncio.get_running_loop().run_in_executor(
        app[keys.PRE_POOL], parse_infer_request, body, request.headers.get(HEADER_LENGTH)
    )
    assert served.tensor is not None  # check_admission: a loaded tensor model
    specs: tuple[TensorSpec, ...] = served.tensor.outputs
    wanted = select_outputs(parsed, specs)
    result = await service.infer(
        name, parsed.inputs, deadline_s=deadline_s, received_at=received_at
    )
    request[keys.TIMING] = result.timing_s
    timing = {f"{k}_ms": round(v * 1000, 3) for k, v in result.timing_s.items()}
    payload, header_length = encode_infer_response(
        name, served.version, parsed.id, result.outputs, wanted, specs, timing
    )
    if header_length is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(
        body=payload,
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(header_length)},
    )
