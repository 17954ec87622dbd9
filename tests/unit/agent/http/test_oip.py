"""The Open Inference Protocol codec: JSON tensors, Triton's binary extension, clear refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from agent.errors import BadRequestError
from agent.http.oip import encode_infer_response, parse_infer_request, select_outputs
from inference.tensor import TensorSpec


def binary_body(doc: dict, *arrays: np.ndarray) -> tuple[bytes, str]:
    header = json.dumps(doc).encode()
    return header + b"".join(a.astype(a.dtype.newbyteorder("<")).tobytes() for a in arrays), str(
        len(header)
    )


def test_json_tensors_flat_and_nested_parse_to_arrays_of_the_declared_type():
    doc = {
        "id": "r1",
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]},
            {"name": "b", "datatype": "INT64", "shape": [2, 1], "data": [[5], [6]]},
            {"name": "c", "datatype": "BOOL", "shape": [1], "data": [True]},
        ],
    }
    req = parse_infer_request(json.dumps(doc).encode(), None)
    assert req.id == "r1"
    assert req.inputs["a"].dtype == np.float32
    assert req.inputs["a"].tolist() == [[1, 2], [3, 4]]
    assert req.inputs["b"].dtype == np.int64
    assert req.inputs["b"].shape == (2, 1)
    assert req.inputs["c"].dtype == np.bool_
    assert req.outputs is None
    assert req.binary_default is False


def test_binary_tensors_are_read_in_order_after_the_json_header():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([[0.5]], np.float16)
    doc = {
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [2, 3],
             "parameters": {"binary_data_size": a.nbytes}},
            {"name": "b", "datatype": "FP16", "shape": [1, 1],
             "parameters": {"binary_data_size": b.nbytes}},
        ],
        "parameters": {"binary_data_output": True},
    }
    body, length = binary_body(doc, a, b)
    req = parse_infer_request(body, length)
    np.testing.assert_array_equal(req.inputs["a"], a)
    np.testing.assert_array_equal(req.inputs["b"], b)
    assert req.binary_default is True


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"inputs": []}, "non-empty list"),
        ([1, 2], "JSON object"),
        ({"inputs": [{"name": "a", "datatype": "STRING", "shape": [1], "data": [1]}]},
         "datatype 'STRING' is not supported"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [-1], "data": [1]}]},
         "non-negative integers"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [3], "data": [1, 2]}]},
         "data has 2 elements, shape [3] needs 3"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": ["x"]}]},
         "not a list of FP32"),
        ({"inputs": [{"name": "a", "datatype": "INT8", "shape": [1], "data": [1000]}]},
         "not a list of INT8"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1]}]},
         "neither data nor"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]},
                     {"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}]},
         "given twice"),
        ({"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}],
          "outputs": [{"name": "y", "parameters": {"classification": 3}}]},
         "classification"),
    ],
)
def test_malformed_requests_are_bad_requests_that_say_what_is_wrong(doc, message):
    with pytest.raises(BadRequestError) as err:
        parse_infer_request(json.dumps(doc).encode(), None)
    assert message in err.value.message


def test_binary_sizes_must_match_the_shape_and_the_body():
    a = np.zeros(4, np.float32)
    doc = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [4],
                       "parameters": {"binary_data_size": 12}}]}
    body, length = binary_body(doc, a[:3])
    with pytest.raises(BadRequestError, match="does not match shape"):
        parse_infer_request(body, length)
    doc["inputs"][0]["parameters"]["binary_data_size"] = 16
    body, length = binary_body(doc, a[:3])
    with pytest.raises(BadRequestError, match="ends before"):
        parse_infer_request(body, length)
    body, length = binary_body(doc, a, a)
    with pytest.raises(BadRequestError, match="add up to 16"):
        parse_infer_request(body, length)
    for bad in ("x", "0", str(len(body) + 1)):
        with pytest.raises(BadRequestError, match="Inference-Header-Content-Length"):
            parse_infer_request(body, bad)
    with pytest.raises(BadRequestError, match="not valid JSON"):
        parse_infer_request(b"\xff\xfe{", None)


def test_outputs_are_selected_by_name_and_unknown_names_refused():
    specs = (TensorSpec("p", "FP32", (-1, 5)), TensorSpec("s", "FP32", (-1, 1)))
    doc = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1]}]}
    req = parse_infer_request(json.dumps(doc).encode(), None)
    assert select_outputs(req, specs) == {"p": False, "s": False}
    doc["outputs"] = [{"name": "s", "parameters": {"binary_data": True}}]
    req = parse_infer_request(json.dumps(doc).encode(), None)
    assert select_outputs(req, specs) == {"s": True}
    doc["outputs"] = [{"name": "nope"}]
    req = parse_infer_request(json.dumps(doc).encode(), None)
    with pytest.raises(BadRequestError, match="no output 'nope'"):
        select_outputs(req, specs)


def test_responses_mix_json_and_binary_outputs_and_round_trip():
    specs = (TensorSpec("p", "FP32", (-1, 2)), TensorSpec("s", "INT64", (-1,)))
    outputs = {"p": np.array([[0.25, 0.75]], np.float32), "s": np.array([7], np.int64)}
    body, length = encode_infer_response(
        "m", "1", "r9", outputs, {"p": True, "s": False}, specs, {"total_ms": 1.0}
    )
    assert length is not None
    doc = json.loads(body[:length])
    assert doc["model_name"] == "m"
    assert doc["id"] == "r9"
    p, s = doc["outputs"]
    assert p["parameters"]["binary_data_size"] == 8
    assert p["datatype"] == "FP32"
    np.testing.assert_array_equal(
        np.frombuffer(body[length:], "<f4").reshape(p["shape"]), outputs["p"]
    )
    assert s["data"] == [7]
    assert s["shape"] == [1]
    body, length = encode_infer_response("m", "1", None, outputs, {"s": False}, specs, {})
    assert length is None
    assert "id" not in json.loads(body)
