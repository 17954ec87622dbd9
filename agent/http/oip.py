"""Open Inference Protocol (KServe v2) request/response bodies, with Triton's binary extension.

JSON tensors carry ``data`` as a flat or nested list in row-major order. With the binary tensor
data extension (tritonclient's default) the body is the JSON header followed by raw
little-endian tensor bytes; the header's length is in ``Inference-Header-Content-Length`` and
each binary tensor says its size in ``parameters.binary_data_size``, in the order of the tensors.
Everything here is parsing and serialising; a malformed body raises ``BadRequestError``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from agent import strict_json
from agent.errors import BadRequestError
from inference.tensor import NUMPY_DTYPES, TensorSpec

HEADER_LENGTH = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    # Requested outputs -> whether each goes back as binary; None: all outputs, default binary.
    outputs: dict[str, bool] | None
    binary_default: bool


def parse_infer_request(body: bytes, header_length: str | None) -> InferRequest:
    header, binary = _split(body, header_length)
    try:
        doc = json.loads(header)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the inference request is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequestError("the inference request is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequestError("the inference request must be a JSON object")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise BadRequestError("'inputs' must be a non-empty list of tensors")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for i, tensor in enumerate(raw_inputs):
        name, array, used = _parse_input(tensor, binary, offset, f"inputs[{i}]")
        if name in inputs:
            raise BadRequestError(f"input {name!r} is given twice")
        inputs[name] = array
        offset += used
    if offset != len(binary):
        raise BadRequestError(
            f"the binary data is {len(binary)} bytes but the inputs' binary_data_size "
            f"add up to {offset}"
        )
    params = _params(doc.get("parameters"), "parameters")
    binary_default = bool(params.get("binary_data_output", False))
    request_id = doc.get("id")
    return InferRequest(
        str(request_id) if request_id is not None else None,
        inputs,
        _parse_outputs(doc.get("outputs"), binary_default),
        binary_default,
    )


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise BadRequestError(f"{HEADER_LENGTH} must be an integer", header_length) from None
    if not 0 < length <= len(body):
        raise BadRequestError(
            f"{HEADER_LENGTH} {length} is outside the body of {len(body)} bytes", header_length
        )
    return body[:length], memoryview(body)[length:]


def _parse_input(
    tensor: Any, binary: memoryview, offset: int, where: str
) -> tuple[str, np.ndarray, int]:
    if not isinstance(tensor, dict):
        raise BadRequestError(f"{where} must be an object with name, datatype, shape, data")
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if not isinstance(name, str) or not name:
        raise BadRequestError(f"{where}.name must be a non-empty string")
    where = f"input {name!r}"
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        raise BadRequestError(
            f"{where}: datatype {datatype!r} is not supported", {"supported": list(NUMPY_DTYPES)}
        )
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise BadRequestError(f"{where}: shape must be a list of non-negative integers", shape)
    dtype = NUMPY_DTYPES[datatype].newbyteorder("<")
    count = math.prod(shape)
    size = _params(tensor.get("parameters"), f"{where}.parameters").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequestError(f"{where}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise BadRequestError(
                f"{where}: binary_data_size {size} does not match shape {shape} of {datatype} "
                f"({count * dtype.itemsize} bytes)"
            )
        if offset + size > len(binary):
            raise BadRequestError(f"{where}: the body ends before its binary data does")
        array = np.frombuffer(binary[offset : offset + size], dtype).reshape(shape)
        return name, array.astype(dtype.newbyteorder("="), copy=False), size
    if "data" not in tensor:
        raise BadRequestError(f"{where} has neither data nor parameters.binary_data_size")
    try:
        array = np.array(tensor["data"], dtype=np.dtype(dtype.newbyteorder("=")))
    except (ValueError, TypeError, OverflowError) as exc:
        raise BadRequestError(f"{where}: data is not a list of {datatype} values: {exc}") from None
    if array.size != count:
        raise BadRequestError(
            f"{where}: data has {array.size} elements, shape {shape} needs {count}"
        )
    return name, array.reshape(shape), 0


def _parse_outputs(raw: Any, binary_default: bool) -> dict[str, bool] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise BadRequestError("'outputs' must be a list of {name, parameters}")
    outputs: dict[str, bool] = {}
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise BadRequestError(f"outputs[{i}] must be an object with a name")
        params = _params(item.get("parameters"), f"outputs[{i}].parameters")
        if params.get("classification"):
            raise BadRequestError("the classification extension is not supported")
        outputs[item["name"]] = bool(params.get("binary_data", binary_default))
    return outputs


def _params(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BadRequestError(f"{where} must be an object")
    return raw


def select_outputs(request: InferRequest, available: tuple[TensorSpec, ...]) -> dict[str, bool]:
    """Output name -> binary?, in the model's order; unknown names are the client's error."""
    names = [s.name for s in available]
    if request.outputs is None:
        return {name: request.binary_default for name in names}
    unknown = [name for name in request.outputs if name not in names]
    if unknown:
        raise BadRequestError(
            f"the model has no output {unknown[0]!r}", {"outputs": names}
        )
    return request.outputs


def encode_infer_response(
    model: str,
    version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    wanted: dict[str, bool],
    specs: tuple[TensorSpec, ...],
    parameters: dict[str, Any],
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
    datatypes = {s.name: s.datatype for s in specs}
    doc: dict[str, Any] = {"model_name": model, "model_version": version}
    if request_id is not None:
        doc["id"] = request_id
    doc["parameters"] = parameters
    tensors: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in wanted.items():
        array = outputs[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": datatypes[name],
            "shape": list(array.shape),
        }
        if binary:
            raw = np.ascontiguousarray(array, array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        tensors.append(entry)
    doc["outputs"] = tensors
    header = strict_json.dumps(doc).encode()
    if not blobs:
        return header, None
    return header + b"".join(blobs), len(header)
