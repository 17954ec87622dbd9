"""Static int8 quantization of a model version (``edge-agent model pack --int8``).

A QDQ model (QuantizeLinear/DequantizeLinear pairs around each quantised operator: activations
uint8, weights int8 per output channel) runs on ONNX Runtime's CPU provider (VNNI kernels) and
TensorRT takes it as an int8 network. Its activation ranges are calibrated on real inputs made
exactly as the daemon makes them: a detector's frames decoded and letterboxed by
:meth:`inference.yolo.YoloV8Detector.preprocess` then scaled like :meth:`~YoloV8Detector.infer`
does, a tensor model's golden rows as they are fed. A range calibrated on other pixels (another
letterbox colour, another scaling) quantises what the node never sees.

``onnxruntime.quantization`` needs the ``onnx`` package, and its pre-processing ``sympy``: the
``pack`` extra; the daemon itself needs neither.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from inference.errors import EdgeError
from inference.files import atomic_copy
from inference.golden import load_detection_golden, read_tensor_golden
from inference.letterbox import to_input
from inference.tensor import NUMPY_DTYPES, TensorModel
from inference.yolo import YoloV8Detector

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class QuantizeError(EdgeError):
    """The model could not be quantised (missing tools, no calibration input, ORT failed)."""


def detector_inputs(detector: YoloV8Detector, golden: Path,
                    extra: Path | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The golden frames (and ``extra``'s images), each as the model's input when served."""
    frames = [f.data for f in load_detection_golden(golden)]
    if extra is not None:
        frames += [p.read_bytes() for p in sorted(extra.iterdir())
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    name = detector.spec.input_name
    for data in frames:
        yield {name: to_input(detector.preprocess(data).blob)}


def tensor_inputs(model: TensorModel, golden: Path,
                  extra: Path | None = None) -> Iterator[dict[str, np.ndarray]]:
    """The golden set's rows (and those of ``extra``'s ``.npz`` files), one row a run."""
    sets = [golden, *(sorted(extra.glob("*.npz")) if extra is not None else [])]
    for path in sets:
        inputs = _npz_inputs(model, path) if path != golden else read_tensor_golden(
            path, model.inputs, model.outputs).inputs
        rows = len(next(iter(inputs.values())))
        for i in range(rows):
            yield {name: array[i:i + 1] for name, array in inputs.items()}


def _npz_inputs(model: TensorModel, path: Path) -> dict[str, np.ndarray]:
    """An extra calibration file: the model's input arrays only (no labels needed)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {s.name: data[s.name].astype(NUMPY_DTYPES[s.datatype]) for s in model.inputs}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise QuantizeError(f"calibration file {path}: needs the model's inputs "
                            f"{[s.name for s in model.inputs]}: {exc}") from exc


@contextlib.contextmanager
def _inside(folder: Path) -> Iterator[None]:
    """Run with ``folder`` as the working directory (the packing commands only, one-shot
    processes: never in the daemon, where the working directory is everyone's)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def _pre_process(run: Any, model: Path, dest: Path) -> None:
    """Shape inference and graph clean-up before quantization. A dynamic batch axis leaves
    symbolic shape inference "incomplete" unless it may merge symbols; where even that fails,
    ONNX's own shape inference does. A failed symbolic pass saves its partial model (with the
    weights as external data) into the working directory: it runs inside ``dest``'s temp
    folder, so nothing is left beside the user's files."""
    model, dest = model.resolve(), dest.resolve()
    with _inside(dest.parent):
        try:
            run(str(model), str(dest), auto_merge=True)
        except ImportError:
            raise
        except Exception:
            run(str(model), str(dest), skip_symbolic_shape=True)


# Layers with weights: quantising them is the gain. What follows the last of them is cheap.
WEIGHTED = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})


def _float_tail(model: Path) -> list[str]:
    """Names the nodes after the graph's last weighted layers (walking back from its outputs,
    stopping at the first weighted node of each path), naming any unnamed node in the file.

    They stay float: a YOLOv8 head concatenates box coordinates in pixels (0..640) with class
    scores (0..1), and one uint8 scale for both rounds every score to 0 (a mAP of 0)."""
    import onnx

    graph_model = onnx.load(str(model))
    graph = graph_model.graph
    renamed = False
    for i, node in enumerate(graph.node):
        if not node.name:
            node.name, renamed = f"edge_agent_node_{i}", True
    producer = {out: node for node in graph.node for out in node.output}
    tail: dict[str, None] = {}
    todo = [o.name for o in graph.output]
    seen: set[str] = set()
    while todo:
        tensor = todo.pop()
        node = producer.get(tensor)
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in WEIGHTED:
            continue
        tail[node.name] = None
        todo.extend(node.input)
    if renamed:
        onnx.save(graph_model, str(model))
    return list(tail)


def quantize_int8(model: Path, dest: Path, inputs: Iterator[dict[str, np.ndarray]]) -> int:
    """Write the int8 QDQ version of ``model`` to ``dest`` (atomically), calibrated on
    ``inputs``; returns how many inputs it was calibrated on."""
    try:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )
    except ImportError as exc:  # onnx missing: the daemon's environment, not the pack extra
        raise QuantizeError(f"int8 quantization needs the pack extra (onnx, sympy): {exc}") \
            from exc
    items = list(inputs)
    if not items:
        raise QuantizeError("no calibration input: the golden set is empty")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(items)

        def get_next(self) -> dict[str, Any] | None:
            return next(self._it, None)

        def rewind(self) -> None:
            self._it = iter(items)

    with tempfile.TemporaryDirectory(prefix="edge-agent-int8-") as tmp:
        prepared, quantised = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        try:
            _pre_process(quant_pre_process, model, prepared)
        except ImportError as exc:  # sympy, for its symbolic shape inference
            raise QuantizeError(f"int8 quantization needs the pack extra (onnx, sympy): "
                                f"{exc}") from exc
        except Exception as exc:  # shape inference or the optimizer refused the graph
            raise QuantizeError(f"cannot prepare {model.name} for quantization: {exc}") from exc
        excluded = _float_tail(prepared)
        try:
            quantize_static(str(prepared), str(quantised), Reader(),
                            quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, per_channel=True,
                            nodes_to_exclude=excluded)
        except Exception as exc:  # ORT's quantizer raises plain exceptions
            raise QuantizeError(f"quantization of {model.name} failed: {exc}") from exc
        atomic_copy(quantised, dest)
    return len(items)
