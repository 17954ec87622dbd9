"""Tensor models: named tensors in, named tensors out (the sensor-fusion model's path).

The input contract (names, datatypes, shapes) is read from the ONNX graph, and every request
is checked against it before it reaches ``session.run``, so a wrong request gets a message that
names the tensor and what was expected instead of an ONNX Runtime stack trace.

Datatype names are the Open Inference Protocol's (``FP32``, ``INT64``, ...); a dimension the
model leaves open is ``-1``. When the first axis of every input is open the model batches:
requests are concatenated along it for one ``session.run`` and the outputs split back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import EdgeError, ModelLoadError
from inference.session import LoadedSession, SessionConfig, create_session

# ONNX Runtime's type strings -> Open Inference Protocol datatypes -> numpy.
_ORT_TO_DATATYPE = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(bool)": "BOOL",
}
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype(np.float32),
    "FP16": np.dtype(np.float16),
    "FP64": np.dtype(np.float64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "BOOL": np.dtype(np.bool_),
}


class TensorInputError(EdgeError):
    """A request's tensors do not match the model's inputs (name, datatype or shape)."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1 where the model leaves the dimension open

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _spec(arg: Any) -> TensorSpec:
    datatype = _ORT_TO_DATATYPE.get(arg.type)
    if datatype is None:
        raise ModelLoadError(f"tensor {arg.name!r} has unsupported type {arg.type}")
    shape = tuple(d if isinstance(d, int) and d > 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, datatype, shape)


def tensor_specs(session: Any) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs of an ONNX Runtime session, in Open Inference Protocol terms."""
    return (
        tuple(_spec(a) for a in session.get_inputs()),
        tuple(_spec(a) for a in session.get_outputs()),
    )


Tensors = dict[str, np.ndarray]


class TensorModel:
    """A loaded ONNX model with named tensor inputs and outputs. Thread-safe like its session."""

    def __init__(self, loaded: LoadedSession) -> None:
        self.loaded = loaded
        session = loaded.session
        self.inputs, self.outputs = tensor_specs(session)
        self._input_by_name = {s.name: s for s in self.inputs}
        self._output_names = [s.name for s in self.outputs]
        first_axes = {s.shape[0] if s.shape else 0 for s in self.inputs}
        # Batching needs an open first axis on every input (and the outputs follow it).
        self.batched = first_axes == {-1}

    @classmethod
    def load(
        cls, path: str | Path, config: SessionConfig | None = None, digest: str | None = None
    ) -> TensorModel:
        return cls(create_session(Path(path), config or SessionConfig(), digest))

    @property
    def provider(self) -> str:
        return self.loaded.provider

    @property
    def max_batch(self) -> int | None:
        """Requests one run takes: None (any) when the model batches, else 1."""
        return None if self.batched else 1

    def fix_batch(self, size: int) -> bool:
        """Not done: each request carries its own number of rows, so shapes vary anyway."""
        return False

    @property
    def labels(self) -> list[str]:
        """Class labels from the ONNX metadata's ``labels`` (a JSON list), if it has one."""
        raw = self.loaded.metadata.get("labels")
        try:
            value = json.loads(raw) if raw else []
        except ValueError:
            return []
        return [str(v) for v in value] if isinstance(value, list) else []

    def validate(self, tensors: Mapping[str, np.ndarray]) -> Tensors:
        """Check a request against the inputs; returns C-contiguous arrays of the right dtype."""
        missing = [name for name in self._input_by_name if name not in tensors]
        unknown = [name for name in tensors if name not in self._input_by_name]
        if missing or unknown:
            raise TensorInputError(
                "the request's inputs do not match the model's",
                {"missing": missing, "unexpected": unknown, "expected": self._contract()},
            )
        checked: Tensors = {}
        batch: int | None = None
        for spec in self.inputs:
            array = tensors[spec.name]
            expected_dtype = NUMPY_DTYPES[spec.datatype]
            if array.dtype != expected_dtype:
                raise TensorInputError(
                    f"input {spec.name!r} must be {spec.datatype}",
                    {"input": spec.name, "expected": spec.as_dict()},
                )
            if array.ndim != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, array.shape, strict=True)
            ) or 0 in array.shape:
                raise TensorInputError(
                    f"input {spec.name!r} has shape {list(array.shape)}, the model takes "
                    f"{list(spec.shape)} (-1: any size)",
                    {"input": spec.name, "expected": spec.as_dict()},
                )
            if self.batched:
                if batch is not None and array.shape[0] != batch:
                    raise TensorInputError(
                        "all inputs must have the same batch size (first dimension)",
                        {"input": spec.name, "batch": array.shape[0], "expected_batch": batch},
                    )
                batch = array.shape[0]
            checked[spec.name] = np.ascontiguousarray(array)
        return checked

    def infer(self, requests: list[Tensors]) -> list[Tensors]:
        """Run validated requests, batched along the first axis when the model allows it."""
        if not self.batched or len(requests) == 1:
            return [self._run(r) for r in requests]
        results: list[Tensors] = []
        group: list[Tensors] = []
        for request in requests:
            if group and not _stackable(group[0], request):
                results.extend(self._run_group(group))
                group = []
            group.append(request)
        results.extend(self._run_group(group))
        return results

    def sample_input(self, batch: int = 1) -> Tensors:
        """Zeros of the model's input shapes (open axes 1, the batch axis ``batch``)."""
        return {
            s.name: np.zeros(
                [batch if i == 0 and self.batched else max(d, 1) for i, d in enumerate(s.shape)],
                NUMPY_DTYPES[s.datatype],
            )
            for s in self.inputs
        }

    def warmup(self, batch: int = 1) -> None:
        """One run on zeros, so the first request does not pay for lazy initialisation."""
        self.infer([self.sample_input(batch)])

    def use_session(self, loaded: LoadedSession) -> None:
        """Run on ``loaded`` (the same model, built with other threads) from now on, warmed up
        first: a run already going finishes on the session it started on."""
        loaded.session.run(self._output_names, self.sample_input())
        self.loaded = loaded

    def _run_group(self, group: list[Tensors]) -> list[Tensors]:
        if len(group) == 1:
            return [self._run(group[0])]
        sizes = [next(iter(r.values())).shape[0] for r in group]
        stacked = {name: np.concatenate([r[name] for r in group]) for name in group[0]}
        outputs = self._run(stacked)
        bounds = np.cumsum([0, *sizes])
        return [
            {name: value[bounds[i] : bounds[i + 1]] for name, value in outputs.items()}
            for i in range(len(group))
        ]

    def _run(self, request: Tensors) -> Tensors:
        values = self.loaded.session.run(self._output_names, request)
        return dict(zip(self._output_names, values, strict=True))

    def _contract(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.inputs]


def _stackable(a: Tensors, b: Tensors) -> bool:
    return all(a[name].shape[1:] == b[name].shape[1:] for name in a)
