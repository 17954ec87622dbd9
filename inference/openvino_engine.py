"""The OpenVINO runtime as a CPU execution path, at fp32 or bf16.

OpenVINO (the ``openvino`` package, the ``openvino`` extra) reads the ONNX file itself. What it
compiles is wrapped in :class:`OpenVINOSession`, which offers the part of
``onnxruntime.InferenceSession`` the runners use (``get_inputs``/``get_outputs`` with ``name``,
``shape`` and ``type``, ``run``, ``get_modelmeta``, ``get_providers``), so a YOLOv8 detector or a
tensor model runs on it unchanged.

Precision is the caller's choice and is checked, never assumed: OpenVINO's own default on a CPU
with AVX512-BF16 or AMX is bf16, so fp32 is asked for explicitly, and bf16 is refused on a CPU
without it (where OpenVINO would quietly compute in fp32 and the path's name would lie).
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from inference.cpu import usable_cores
from inference.errors import ModelLoadError, ProviderUnavailableError
from inference.session import LoadedSession

log = logging.getLogger(__name__)

PROVIDER = "openvino"  # LoadedSession.provider of a session built here
# Our precision names -> OpenVINO's INFERENCE_PRECISION_HINT values.
PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
CPU = "CPU"
# The accelerators OpenVINO drives besides the CPU: Intel integrated/discrete GPUs and NPUs.
# Both compute in fp16 (the NPU in fp16 or lower whatever it is asked: no hint is passed there).
ACCELERATORS = ("GPU", "NPU")
INSTALL_HINT = "pip install 'edge-agent[openvino]'"

# OpenVINO element type names -> ONNX Runtime's type strings (what inference.tensor reads).
_ORT_TYPES = {
    "f32": "tensor(float)",
    "f16": "tensor(float16)",
    "f64": "tensor(double)",
    "bf16": "tensor(bfloat16)",
    "i8": "tensor(int8)",
    "i16": "tensor(int16)",
    "i32": "tensor(int32)",
    "i64": "tensor(int64)",
    "u8": "tensor(uint8)",
    "u16": "tensor(uint16)",
    "u32": "tensor(uint32)",
    "u64": "tensor(uint64)",
    "boolean": "tensor(bool)",
}


class PrecisionUnavailableError(ProviderUnavailableError):
    """A precision this node cannot compute in (bf16 on a CPU without bf16 instructions)."""


_core: Any = None
_core_lock = threading.Lock()


def _openvino() -> ModuleType:
    """The ``openvino`` module, or a clear error naming the extra to install."""
    imported = sys.modules.get("openvino")
    if imported is not None:
        return imported
    # Importing openvino sends a usage event to Google Analytics (from a forked child, killed
    # after 3 s where DNS does not answer) unless it believes it runs in CI. A factory node
    # must not phone home: it is told so for the import, when its telemetry decides, and the
    # environment is put back as it was.
    before = os.environ.get("CI")
    os.environ["CI"] = "true"
    try:
        return importlib.import_module("openvino")
    except ImportError as exc:
        raise ProviderUnavailableError(
            f"the OpenVINO runtime is not installed ({INSTALL_HINT})", {"error": str(exc)}
        ) from exc
    finally:
        if before is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = before


def _ov_core() -> Any:
    """One ``openvino.Core`` per process: it caches device plugins and their capabilities."""
    global _core
    ov = _openvino()
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        return _core


def openvino_available() -> bool:
    """Whether the OpenVINO runtime can be imported here."""
    try:
        _openvino()
    except ProviderUnavailableError:
        return False
    return True


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). OpenVINO's own CPU
    capabilities when it is installed (what it will really use), else the kernel's CPU flags."""
    if openvino_available():
        try:
            caps = _ov_core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        except Exception as exc:  # a plugin that cannot start: the flags still answer
            log.warning("OpenVINO CPU capabilities unreadable", extra={"error": repr(exc)})
        else:
            return "BF16" in caps
    return _cpuinfo_has_bf16(Path("/proc/cpuinfo"))


def _cpuinfo_has_bf16(cpuinfo: Path) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def available_precisions() -> list[str]:
    """The precisions :func:`create_openvino_session` accepts on this node's CPU: none without
    OpenVINO, fp32, and bf16 where the CPU has it."""
    if not openvino_available():
        return []
    return ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]


def accelerators() -> list[str]:
    """The Intel GPUs and NPUs OpenVINO sees on this node ("GPU", "GPU.1", "NPU"...); none
    without OpenVINO or where a plugin cannot start."""
    if not openvino_available():
        return []
    try:
        devices = list(_ov_core().available_devices)
    except Exception as exc:
        log.warning("OpenVINO devices unreadable", extra={"error": repr(exc)})
        return []
    return [d for d in devices if d.split(".")[0] in ACCELERATORS]


def has_device(device: str) -> bool:
    """Whether OpenVINO sees ``device`` here: one it names ("GPU.1"), or a kind ("GPU") of
    which it sees any."""
    seen = accelerators()
    return device in seen or ("." not in device and any(d.split(".")[0] == device
                                                        for d in seen))


def compile_config(device: str, precision: str, threads: int, streams: int,
                   cache_dir: Path | None) -> dict[str, Any]:
    """OpenVINO's compile settings for one session: on the CPU, ``threads`` per run and
    ``streams`` runs at once at ``precision``; on a GPU fp16 and ``streams`` runs at once; on
    an NPU its own precision (it takes no hint)."""
    kind = device.split(".")[0]
    config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": streams}
    if kind == CPU:
        config["INFERENCE_NUM_THREADS"] = threads * streams
    if kind != "NPU":
        config["INFERENCE_PRECISION_HINT"] = PRECISIONS[precision]
    if cache_dir is not None:
        config["CACHE_DIR"] = str(cache_dir)
    return config


def _check_device(device: str, precision: str) -> None:
    kind = device.split(".")[0]
    if kind == CPU:
        if precision == "fp16":
            raise PrecisionUnavailableError("fp16 is an OpenVINO GPU/NPU precision, not a CPU one")
        if precision == "bf16" and not cpu_has_bf16():
            raise PrecisionUnavailableError(
                "this CPU has no bf16 instructions (AVX512-BF16 or AMX): the bf16 path is "
                "refused (it would run at fp32 under a bf16 name)", {"precision": precision})
        return
    if kind not in ACCELERATORS:
        raise PrecisionUnavailableError(f"OpenVINO device {device!r} is not one of "
                                        f"{[CPU, *ACCELERATORS]}")
    if precision != "fp16":
        raise PrecisionUnavailableError(f"OpenVINO on {device} computes in fp16, not {precision}")
    if not has_device(device):
        raise PrecisionUnavailableError(f"this node has no OpenVINO device {device}",
                                        {"devices": accelerators()})


@dataclass(frozen=True)
class TensorArg:
    """The fields of ``onnxruntime.NodeArg`` the runners read. ``shape``: ints, None where the
    model leaves a dimension open."""

    name: str
    shape: list[int | None]
    type: str


@dataclass(frozen=True)
class ModelMeta:
    custom_metadata_map: dict[str, str] = field(default_factory=dict)


class OpenVINOSession:
    """A compiled OpenVINO model behind ``onnxruntime.InferenceSession``'s interface.

    Thread-safe like an ORT session: an OpenVINO infer request runs one inference at a time, so
    each concurrent ``run`` takes an idle request from a pool (a new one when all are busy:
    the pool grows to the most callers seen at once, each request holding its own
    intermediate buffers) and puts it back when done."""

    def __init__(self, compiled: Any, metadata: dict[str, str], precision: str) -> None:
        self._compiled = compiled
        self._meta = ModelMeta(dict(metadata))
        self.precision = precision
        self._inputs = [_arg(port) for port in compiled.inputs]
        self._outputs = [_arg(port) for port in compiled.outputs]
        self._output_ports = {a.name: port for a, port in
                              zip(self._outputs, compiled.outputs, strict=True)}
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._created = 0
        self._lock = threading.Lock()

    def get_inputs(self) -> list[TensorArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[TensorArg]:
        return list(self._outputs)

    def get_modelmeta(self) -> ModelMeta:
        return self._meta

    def get_providers(self) -> list[str]:
        return ["OpenVINO"]

    @property
    def infer_requests(self) -> int:
        """Infer requests made so far (the most concurrent runs seen)."""
        return self._created

    def run(self, output_names: list[str] | None, input_feed: dict[str, np.ndarray],
            run_options: Any = None) -> list[np.ndarray]:
        """Outputs ``output_names`` (all when None), in that order, for ``input_feed``."""
        names = output_names or [a.name for a in self._outputs]
        unknown = [n for n in names if n not in self._output_ports]
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; the model has {list(self._output_ports)}")
        request = self._acquire()
        try:
            # share_outputs=False (the default) copies the outputs out of the request's
            # buffers, which the next run on this request overwrites.
            results = request.infer(input_feed)
            return [np.asarray(results[self._output_ports[n]]) for n in names]
        finally:
            self._idle.put(request)

    def _acquire(self) -> Any:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                self._created += 1
                return self._compiled.create_infer_request()


def _arg(port: Any) -> TensorArg:
    shape = [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
    kind = port.get_element_type().get_type_name()
    return TensorArg(port.get_any_name(), shape, _ORT_TYPES.get(kind, f"tensor({kind})"))


def _metadata(model: Any) -> dict[str, str]:
    """The ONNX file's ``metadata_props`` (Ultralytics' names and imgsz, our labels), which
    OpenVINO's ONNX reader keeps in the model's runtime info under ``framework``."""
    try:
        framework = model.get_rt_info()["framework"]
    except Exception:  # no metadata: an empty map, as ONNX Runtime gives
        return {}
    if not isinstance(framework, dict):
        return {}
    out: dict[str, str] = {}
    for key, value in framework.items():
        try:
            out[str(key)] = str(value.astype(str))
        except Exception:
            out[str(key)] = str(value)
    return out


def create_openvino_session(path: Path, precision: str, threads: int, digest: str,
                            streams: int = 1, cache_dir: Path | None = None,
                            device: str = CPU) -> LoadedSession:
    """``path`` compiled by OpenVINO for ``device`` at ``precision``: this CPU at "fp32" or
    "bf16", an Intel GPU or NPU (``device`` "GPU", "NPU", as :func:`accelerators` names them)
    at "fp16".

    ``threads`` per run (as ``intra_op_threads``; 0: the cores this process may use);
    ``streams`` runs that may go at once at that width (OpenVINO's NUM_STREAMS: the compiled
    model gets ``threads * streams`` threads). ``cache_dir``: OpenVINO keeps compiled models
    there (its own keys: the model, the settings, the device and its version), so a restart
    loads instead of compiling again.
    bf16 on a CPU without it: :class:`PrecisionUnavailableError`; OpenVINO not installed:
    :class:`ProviderUnavailableError`; a file it cannot read: :class:`ModelLoadError`."""
    if precision not in PRECISIONS:
        raise PrecisionUnavailableError(
            f"OpenVINO precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    threads = threads or usable_cores()
    if threads < 1 or streams < 1:
        raise ValueError(f"threads must be >= 0 and streams >= 1, got {threads} and {streams}")
    core = _ov_core()
    _check_device(device, precision)
    hint = PRECISIONS[precision]
    try:
        model = core.read_model(str(path))
        if cache_dir is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
        compiled = core.compile_model(
            model, device, compile_config(device, precision, threads, streams, cache_dir))
    except Exception as exc:  # OpenVINO raises plain RuntimeErrors for unreadable graphs
        raise ModelLoadError(f"OpenVINO cannot load {path.name} on {device}: {exc}",
                             str(path)) from exc
    # What the plugin really computes in (it may override a hint it cannot honour); an NPU
    # is given none and says none.
    got = hint if device.split(".")[0] == "NPU" else \
        compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    if got != hint:
        raise PrecisionUnavailableError(
            f"OpenVINO compiled {path.name} at {got}, not the {precision} asked for",
            {"precision": precision, "compiled": got})
    session = OpenVINOSession(compiled, _metadata(model), precision)
    return LoadedSession(
        session=session,
        provider=PROVIDER,
        requested=[PROVIDER],
        digest=digest,
        intra_op_threads=threads,
        metadata=session.get_modelmeta().custom_metadata_map,
        path=path,
        precision=precision,
    )
