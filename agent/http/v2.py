"""Open Inference Protocol (KServe v2) handlers: infer, model metadata and readiness."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from agent import __version__
from agent.errors import DrainingError
from agent.http import keys
from agent.http.body import check_length, read_body
from agent.http.handlers import camera_id, deadline_from
from agent.http.oip import (
    HEADER_LENGTH,
    encode_infer_response,
    parse_infer_request,
    select_outputs,
)
from agent.records import Model, VersionRecord
from agent.service import check_version
from agent.strict_json import json_response

EXTENSIONS = ["binary_tensor_data"]


async def server_metadata(request: web.Request) -> web.Response:
    return json_response(
        {"name": "edge-agent", "version": __version__, "extensions": EXTENSIONS}
    )


def _model(request: web.Request) -> tuple[Model, VersionRecord | None]:
    model = request.app[keys.SERVICE].get(request.match_info["name"])
    record = model.active  # taken once: everything below describes this one version
    check_version(model, record, request.match_info.get("version"))
    return model, record


async def model_metadata(request: web.Request) -> web.Response:
    model, record = _model(request)
    inputs, outputs = record.signature() if record is not None else ((), ())
    parameters: dict[str, object] = {"kind": model.kind, "state": model.state.value}
    if record is not None and record.labels:
        parameters["labels"] = list(record.labels)
    body: dict[str, object] = {
        "name": model.name,
        "versions": [record.version] if record is not None else [],
        "platform": "onnxruntime_onnx",
        "inputs": [t.as_dict() for t in inputs],
        "outputs": [t.as_dict() for t in outputs],
        "parameters": parameters,
    }
    return json_response(body)


async def model_ready(request: web.Request) -> web.Response:
    model, record = _model(request)
    ready = record is not None and not request.app[keys.SHUTDOWN].draining
    return json_response({"name": model.name, "ready": ready}, status=200 if ready else 503)


async def infer(request: web.Request) -> web.Response:
    received_at = time.monotonic()
    app = request.app
    settings, service = app[keys.SETTINGS], app[keys.SERVICE]
    if app[keys.SHUTDOWN].stopped:
        raise DrainingError("shutting down")
    name = request[keys.MODEL] = request.match_info["name"]
    request[keys.CAMERA] = camera_id(request)
    deadline_s = deadline_from(request)
    check_length(request, settings.limits.max_body_bytes)
    # Admitted once: the answer names the version that computed it, whatever swaps meanwhile.
    record, ticket = service.admit(name, "tensor", request.match_info.get("version"))
    try:
        body = await read_body(
            request, settings.limits.max_body_bytes, settings.limits.body_timeout_s
        )
        # A JSON body of megabytes takes a while to parse: not on the event loop.
        parsed = await asyncio.get_running_loop().run_in_executor(
            app[keys.PREPOST_POOL], parse_infer_request, body, request.headers.get(HEADER_LENGTH)
        )
        _, specs = record.signature()
        wanted = select_outputs(parsed, specs)
        result = await service.infer(
            record, parsed.inputs, deadline_s=deadline_s, received_at=received_at, ticket=ticket
        )
    finally:
        ticket.release()
    request[keys.TIMING] = result.timing_s
    timing = {f"{k}_ms": round(v * 1000, 3) for k, v in result.timing_s.items()}
    payload, header_length = encode_infer_response(
        name, record.version, parsed.id, result.outputs, wanted, specs, timing
    )
    if header_length is None:
        return web.Response(body=payload, content_type="application/json")
    return web.Response(
        body=payload,
        content_type="application/octet-stream",
        headers={HEADER_LENGTH: str(header_length)},
    )
