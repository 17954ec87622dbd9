"""ONNX Runtime session factory: provider chain, CPU thread policy, and what really loaded."""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import onnxruntime as ort

from inference.cpu import usable_cores
from inference.errors import ModelLoadError, ProviderUnavailableError
from inference.providers import (
    OPENVINO_RUNTIME,
    OpenVINOProvider,
    ProviderContext,
    default_providers,
    resolve_chain,
)

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("tensorrt", "cuda", "cpu")


@dataclass(frozen=True)
class SessionConfig:
    """How to build a session. ``intra_op_threads=0`` means the cores this process may use."""

    providers: tuple[str, ...] = DEFAULT_PROVIDERS
    intra_op_threads: int = 0
    inter_op_threads: int = 1
    # Spin-wait between the parallel sections of a run: faster on an idle machine, much slower
    # where another job holds a core. When on, spinning stops when the run returns
    # (force_spinning_stop), so idle threads never burn a core between frames.
    allow_spinning: bool = False
    cache_dir: Path | None = None
    device_id: int = 0
    trt_fp16: bool = True
    trt_int8: str = "auto"  # auto: on for QDQ-quantised models
    # The OpenVINO runtime's paths (fp32, bf16) may be measured by the precision gate on a CPU
    # node (agent.precision): off unless the settings enable them.
    openvino: bool = False

    def threads(self) -> int:
        return self.intra_op_threads if self.intra_op_threads > 0 else usable_cores()


class InferenceSessionLike(Protocol):
    """The part of ``onnxruntime.InferenceSession`` the runners use: an ORT session, or another
    runtime's adapter (``inference.openvino_engine.OpenVINOSession``). ``run`` is thread-safe."""

    def get_inputs(self) -> list[Any]: ...

    def get_outputs(self) -> list[Any]: ...

    def get_modelmeta(self) -> Any: ...

    def get_providers(self) -> list[str]: ...

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any],
            run_options: Any = None) -> list[Any]: ...


@dataclass
class LoadedSession:
    session: InferenceSessionLike
    provider: str  # short name of the provider that really runs the model, e.g. "cpu"
    requested: list[str]
    digest: str
    intra_op_threads: int
    metadata: dict[str, str] = field(default_factory=dict)
    path: Path | None = None  # the file it was built from (to build it again, other threads)
    precision: str = "fp32"  # what it computes in ("bf16": OpenVINO's bf16 path)
    # What built it, to build it again (another runtime behind the same session interface);
    # None: create_session.
    factory: Callable[[Path, SessionConfig, str], LoadedSession] | None = None


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def create_session(model: Path, config: SessionConfig, digest: str | None = None) -> LoadedSession:
    """Load ``model`` with the first available providers of ``config.providers``.

    onnxruntime-gpu silently falls back to CPU when CUDA or TensorRT cannot initialise, so the
    provider in use is read back from the session rather than assumed.
    """
    try:
        digest = digest or file_digest(model)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {model}: {exc.strerror}", str(model)) from exc
    known = default_providers()
    chain = resolve_chain(config.providers, available_providers(config.providers), known)
    if not chain:
        raise ProviderUnavailableError(
            f"none of the execution providers {list(config.providers)} is available",
            {"available": available_providers(config.providers)},
        )
    if chain[0].name == "openvino":
        # Not an ORT provider: the OpenVINO runtime builds the whole session (at fp32: the
        # chain is the exact path; bf16 is a precision path chosen by its golden-set score).
        from inference.openvino_engine import create_openvino_session

        try:
            return create_openvino_session(model, "fp32", config.threads(), digest,
                                           cache_dir=openvino_cache(config))
        except (ModelLoadError, ProviderUnavailableError) as exc:
            rest = [p for p in chain if p.name != "openvino"]
            if not rest:
                raise
            log.warning("execution provider fallback", extra={
                "model": str(model), "wanted": "openvino", "using": rest[0].name,
                "error": exc.message})
    # OpenVINO later in the chain is only a fallback for ORT providers that are missing here;
    # ORT itself falls back along the rest.
    chain = [p for p in chain if p.name != "openvino"]
    if not chain:
        raise ProviderUnavailableError(
            f"none of the execution providers {list(config.providers)} is available",
            {"available": available_providers(config.providers)},
        )
    ctx = ProviderContext(
        model_digest=digest,
        cache_dir=config.cache_dir,
        device_id=config.device_id,
        fp16=config.trt_fp16,
        int8=chain[0].name == "tensorrt" and _want_int8(config.trt_int8, model),
        gpu_name=_gpu_name(config.device_id) if chain[0].name != "cpu" else "",
    )
    if chain[0].name != "cpu":
        _preload_gpu_libraries()
    threads = config.threads()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = max(1, config.inter_op_threads)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Memory patterns (allocations planned from the first run of each input shape) made CPU
    # runs no faster and held 20-25 MiB more per session at peak (a YOLOv8n at 640, 2 vCPUs):
    # off on the CPU provider; on elsewhere, where device allocations are dearer.
    opts.enable_mem_pattern = chain[0].name != "cpu"
    spin = "1" if config.allow_spinning else "0"
    opts.add_session_config_entry("session.intra_op.allow_spinning", spin)
    opts.add_session_config_entry("session.inter_op.allow_spinning", spin)
    # Spinning (when allowed) ends as soon as the last concurrent run returns, so idle pool
    # threads never compete with the next frame's decode.
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    opts.log_severity_level = 3  # errors only: ORT warnings are noisy and not actionable
    providers = [(p.ort_name, p.options(ctx)) for p in chain]
    try:
        session = ort.InferenceSession(str(model), sess_options=opts, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
        raise ModelLoadError(f"onnxruntime cannot load {model.name}: {exc}", str(model)) from exc
    in_use = session.get_providers()[0]
    short = next((p.name for p in chain if p.ort_name == in_use), in_use)
    if short != chain[0].name:
        log.warning(
            "execution provider fallback",
            extra={"model": str(model), "wanted": chain[0].name, "using": short},
        )
    return LoadedSession(
        session=session,
        provider=short,
        requested=[p.name for p in chain],
        digest=digest,
        intra_op_threads=threads,
        metadata=dict(session.get_modelmeta().custom_metadata_map),
        path=model,
    )


def available_providers(requested: tuple[str, ...] | list[str]) -> list[str]:
    """ONNX Runtime's available providers, plus the OpenVINO runtime where the chain asks for
    it and it is installed. Only then: importing OpenVINO takes a second and more, and a
    daemon that did not ask for it must not pay that (nor hold the GIL that long) at start."""
    available = ort.get_available_providers()
    if OpenVINOProvider.name not in requested:
        return available
    from inference.openvino_engine import openvino_available

    return available + ([OPENVINO_RUNTIME] if openvino_available() else [])


def openvino_cache(config: SessionConfig) -> Path | None:
    """Where OpenVINO keeps its compiled models: on the persistent state dir, beside the
    TensorRT engines."""
    return config.cache_dir / "openvino" if config.cache_dir is not None else None


def first_provider(config: SessionConfig) -> str:
    """The provider a session built with ``config`` tries first ("cpu" where nothing else of
    its chain is available)."""
    chain = resolve_chain(config.providers, available_providers(config.providers),
                          default_providers())
    return chain[0].name if chain else ""


def rebuild_session(loaded: LoadedSession, config: SessionConfig) -> LoadedSession:
    """The same model file again, built with ``config`` (e.g. other threads), by what built
    it: its factory, else OpenVINO at its precision for an OpenVINO session, else
    :func:`create_session`."""
    if loaded.path is None:
        raise ModelLoadError("the session was not built from a file: it cannot be rebuilt")
    if loaded.factory is not None:
        again = loaded.factory(loaded.path, config, loaded.digest)
        again.factory = loaded.factory
        return again
    if loaded.provider == "openvino":
        from inference.openvino_engine import create_openvino_session

        return create_openvino_session(loaded.path, loaded.precision, config.threads(),
                                       loaded.digest, cache_dir=openvino_cache(config))
    return create_session(loaded.path, config, loaded.digest)


def _preload_gpu_libraries() -> None:
    """Load CUDA/cuDNN from pip-installed NVIDIA packages when onnxruntime-gpu was installed
    with them (``onnxruntime-gpu[cuda,cudnn]``); with system CUDA (a CUDA base image) this finds
    nothing to do. It prints instead of raising, so its output goes to the log."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            preload()
    except Exception as exc:  # best effort: session creation reports the real failure
        log.warning("GPU library preload failed", extra={"error": repr(exc)})
    if out.getvalue().strip():
        log.info("GPU library preload", extra={"output": out.getvalue().strip()[:2000]})


def _want_int8(mode: str, model: Path) -> bool:
    if mode == "on":
        return True
    if mode == "off":
        return False
    # A QDQ model carries QuantizeLinear nodes; their op_type is stored as plain bytes in the
    # protobuf, so a byte search finds them without importing the onnx package.
    return b"QuantizeLinear" in model.read_bytes()


def _gpu_name(device_id: int) -> str:
    try:
        import pynvml  # nvidia-ml-py, installed with the gpu extra
    except ImportError:
        return ""
    try:
        pynvml.nvmlInit()
        try:
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(device_id))
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver, no device: the engine dir key just omits the GPU
        return ""
    return name.decode() if isinstance(name, bytes) else str(name)
