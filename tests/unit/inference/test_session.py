from __future__ import annotations

import onnxruntime as ort
import pytest
from support import TINY_MODEL

from inference.errors import ModelLoadError, ProviderUnavailableError
from inference.providers import (
    CUDAProvider,
    ProviderContext,
    TensorRTProvider,
    default_providers,
    resolve_chain,
)
from inference.session import SessionConfig, create_session, file_digest


def test_chain_keeps_order_and_skips_what_this_build_lacks():
    known = default_providers()
    chain = resolve_chain(["tensorrt", "cuda", "cpu"], ["CPUExecutionProvider"], known)
    assert [p.name for p in chain] == ["cpu"]
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert [p.name for p in resolve_chain(["cuda", "tensorrt", "cpu"], gpu, known)] == [
        "cuda",
        "tensorrt",
        "cpu",
    ]
    with pytest.raises(ValueError, match="unknown execution provider"):
        resolve_chain(["vulkan"], gpu, known)


def test_tensorrt_options_cache_engines_by_model_and_build(tmp_path):
    ctx = ProviderContext(model_digest="ab" * 32, cache_dir=tmp_path, gpu_name="Orin")
    opts = TensorRTProvider().options(ctx)
    assert opts["trt_fp16_enable"] == "True"
    assert opts["trt_int8_enable"] == "False"
    assert opts["trt_engine_cache_enable"] == "True"
    engines = opts["trt_engine_cache_path"]
    assert engines.startswith(str(tmp_path / "tensorrt"))
    assert engines.endswith("abababababababab")
    other_gpu = TensorRTProvider().options(
        ProviderContext(model_digest="ab" * 32, cache_dir=tmp_path, gpu_name="A2")
    )
    assert other_gpu["trt_engine_cache_path"] != engines


def test_cuda_arena_grows_only_as_requested():
    opts = CUDAProvider().options(ProviderContext(model_digest="0", cache_dir=None, device_id=1))
    assert opts == {"device_id": "1", "arena_extend_strategy": "kSameAsRequested"}


def test_cpu_session_reports_provider_threads_and_spinning_policy():
    loaded = create_session(TINY_MODEL, SessionConfig(intra_op_threads=1))  # off by default
    assert loaded.provider == "cpu"
    assert loaded.intra_op_threads == 1
    assert loaded.digest == file_digest(TINY_MODEL)
    assert loaded.metadata["names"].startswith("{0: 'scratch'")
    opts = loaded.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.force_spinning_stop") == "1"
    spinning = create_session(TINY_MODEL, SessionConfig(intra_op_threads=1, allow_spinning=True))
    spin_opts = spinning.session.get_session_options()
    assert spin_opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    # Spinning is for the run in progress only: it stops when the run returns.
    assert spin_opts.get_session_config_entry("session.force_spinning_stop") == "1"


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_silent_gpu_fallback_is_reported(monkeypatch):
    # No GPU here: pretend this build lists CUDA (as onnxruntime-gpu does on a GPU-less node).
    # ORT then falls back to CPU without raising; the session must say what really runs.
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    loaded = create_session(TINY_MODEL, SessionConfig(providers=("cuda", "cpu")))
    assert loaded.requested == ["cuda", "cpu"]
    assert loaded.provider == "cpu"


def test_no_available_provider_is_a_clear_error(monkeypatch):
    # What a CPU build says; a GPU build ('.[gpu,test]') lists TensorRT even with no GPU.
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ProviderUnavailableError):
        create_session(TINY_MODEL, SessionConfig(providers=("tensorrt",)))


def test_missing_or_garbage_model_is_a_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="cannot read"):
        create_session(tmp_path / "nope.onnx", SessionConfig())
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        create_session(junk, SessionConfig())


def test_int8_follows_qdq_nodes_in_auto_mode(tmp_path):
    from inference.session import _want_int8

    qdq = tmp_path / "qdq.onnx"
    qdq.write_bytes(b"...QuantizeLinear...DequantizeLinear...")
    assert _want_int8("auto", qdq) is True
    assert _want_int8("auto", TINY_MODEL) is False
    assert _want_int8("on", TINY_MODEL) is True
    assert _want_int8("off", qdq) is False
