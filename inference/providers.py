"""Execution providers: the ordered chain TensorRT -> CUDA -> CPU and each one's options.

``openvino`` may join the chain (e.g. ``[openvino, cpu]``): the OpenVINO runtime (the
``openvino`` package, not ONNX Runtime's OpenVINO provider) runs the whole model at fp32 where
it is installed (``inference.openvino_engine``); it has no ORT options.

Each provider is a small object behind the :class:`ExecutionProvider` protocol; the chain is
built from an explicit name -> provider dict (:func:`default_providers`), never by scanning.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import onnxruntime as ort


@dataclass(frozen=True)
class ProviderContext:
    """What a provider needs to know about the model and the node to choose its options."""

    model_digest: str
    cache_dir: Path | None
    device_id: int = 0
    fp16: bool = True
    int8: bool = False
    gpu_name: str = ""


class ExecutionProvider(Protocol):
    name: str
    ort_name: str

    def options(self, ctx: ProviderContext) -> dict[str, str]: ...


class TensorRTProvider:
    name = "tensorrt"
    ort_name = "TensorrtExecutionProvider"

    def options(self, ctx: ProviderContext) -> dict[str, str]:
        opts = {
            "device_id": str(ctx.device_id),
            "trt_fp16_enable": _flag(ctx.fp16),
            "trt_int8_enable": _flag(ctx.int8),
        }
        if ctx.cache_dir is not None:
            # Engines are specific to the model, the ORT/TensorRT build and the GPU: a stale
            # engine from another build fails to deserialise or, worse, runs wrongly.
            engines = trt_engine_dir(ctx)
            engines.mkdir(parents=True, exist_ok=True)
            opts.update(
                trt_engine_cache_enable="True",
                trt_engine_cache_path=str(engines),
                trt_timing_cache_enable="True",
                trt_timing_cache_path=str(engines.parent),
            )
        return opts


class CUDAProvider:
    name = "cuda"
    ort_name = "CUDAExecutionProvider"

    def options(self, ctx: ProviderContext) -> dict[str, str]:
        # kSameAsRequested: the default doubling arena grabs far more GPU memory than a
        # fixed-shape detector needs, which starves other processes on a shared edge GPU.
        return {"device_id": str(ctx.device_id), "arena_extend_strategy": "kSameAsRequested"}


class CPUProvider:
    name = "cpu"
    ort_name = "CPUExecutionProvider"

    def options(self, ctx: ProviderContext) -> dict[str, str]:
        return {}


# How the OpenVINO runtime shows in the list of available providers (an ORT provider name it
# can never clash with: ONNX Runtime's own is "OpenVINOExecutionProvider").
OPENVINO_RUNTIME = "openvino-runtime"


class OpenVINOProvider:
    name = "openvino"
    ort_name = OPENVINO_RUNTIME

    def options(self, ctx: ProviderContext) -> dict[str, str]:
        return {}  # not an ORT provider: inference.openvino_engine builds its session


def default_providers() -> dict[str, ExecutionProvider]:
    """The providers this project knows, by the names settings use."""
    return {p.name: p for p in (TensorRTProvider(), CUDAProvider(), OpenVINOProvider(),
                                CPUProvider())}


def trt_engine_dir(ctx: ProviderContext) -> Path:
    assert ctx.cache_dir is not None
    build = hashlib.sha256(f"{ort.__version__}|{ctx.gpu_name}".encode()).hexdigest()[:16]
    return ctx.cache_dir / "tensorrt" / build / ctx.model_digest[:16]


def resolve_chain(
    requested: list[str] | tuple[str, ...],
    available: list[str],
    known: dict[str, ExecutionProvider],
) -> list[ExecutionProvider]:
    """The requested providers this onnxruntime build has, in the requested order."""
    chain = []
    for name in requested:
        provider = known.get(name)
        if provider is None:
            raise ValueError(f"unknown execution provider {name!r}; known: {sorted(known)}")
        if provider.ort_name in available:
            chain.append(provider)
    return chain


def _flag(value: bool) -> str:
    return "True" if value else "False"
