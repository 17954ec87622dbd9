"""The variant gate's rule, its store and the sidecar's variants list (pure parts; the real
measurement on real models is in tests/integration/test_precision_variants.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.precision import (
    ChoiceStore,
    Measured,
    PrecisionPath,
    VariantFile,
    check_pinned,
    choose,
    precision_choices,
    precision_paths,
    select,
    store_key,
)
from agent.settings_loader import SettingsError, load_settings
from inference.golden import GoldenSpec
from inference.session import SessionConfig
from inference.variants import VariantError, sidecar_variants


def m(precision: str, ms: float, score: float, error: str = "") -> Measured:
    return Measured(precision, ms, score, error=error)


def test_the_fastest_variant_within_max_drop_serves():
    measured = {"fp32": m("fp32", 50, 0.86), "int8": m("int8", 30, 0.855)}
    precision, why = choose(measured, 0.01)
    assert precision == "int8"
    assert "30.00 ms vs fp32 50.00 ms" in why


def test_a_variant_beyond_max_drop_never_serves_however_fast():
    measured = {"fp32": m("fp32", 50, 0.86), "int8": m("int8", 1, 0.80)}
    precision, why = choose(measured, 0.01)
    assert precision == "fp32"
    assert "int8 scored 0.8000, 0.0600 under fp32 (max_drop 0.01)" in why


def test_fp32_serves_when_it_is_the_fastest_or_on_a_tie():
    assert choose({"fp32": m("fp32", 20, 0.86), "int8": m("int8", 30, 0.86)}, 0.01)[0] == "fp32"
    assert choose({"fp32": m("fp32", 30, 0.86), "int8": m("int8", 30, 0.86)}, 0.01)[0] == "fp32"


def test_among_several_qualified_paths_the_fastest_wins_and_failed_ones_are_out():
    measured = {"fp32": m("fp32", 50, 0.86), "int8": m("int8", 30, 0.86),
                "bf16": m("bf16", 20, 0.859), "x": Measured("x", error="no kernel")}
    precision, why = choose(measured, 0.01)
    assert precision == "bf16"
    assert "x no kernel" in why


def test_no_fp32_score_means_fp32():
    assert choose({"fp32": Measured("fp32", error="boom"), "int8": m("int8", 1, 1.0)},
                  1.0)[0] == "fp32"


def test_a_pin_skips_the_speed_comparison_but_not_the_accuracy_check():
    slow_int8 = {"fp32": m("fp32", 10, 0.86), "int8": m("int8", 30, 0.855)}
    assert check_pinned(slow_int8, "int8", 0.01)[0] == "int8"
    worse = {"fp32": m("fp32", 50, 0.86), "int8": m("int8", 10, 0.80)}
    precision, why = check_pinned(worse, "int8", 0.01)
    assert precision == "fp32"
    assert "pinned int8, but it scored 0.8000, 0.0600 under fp32" in why
    failed = {"fp32": m("fp32", 50, 0.86), "int8": Measured("int8", error="no kernel")}
    assert check_pinned(failed, "int8", 1.0) == ("fp32", "pinned int8, but it failed: no "
                                                           "kernel: fp32 serves")


def test_the_sidecar_variants_list_is_read_and_checked():
    sidecar = {"file": "model.onnx", "variants": [
        {"precision": "fp32", "file": "model.onnx", "sha256": "ab" * 32, "score": 0.9},
        {"precision": "int8", "file": "model.int8.onnx", "sha256": "sha256:" + "cd" * 32,
         "score": 0.89}]}
    (int8,) = sidecar_variants(sidecar)
    assert (int8.precision, int8.file, int8.sha256, int8.score) == (
        "int8", "model.int8.onnx", "cd" * 32, 0.89)
    assert sidecar_variants({"file": "model.onnx"}) == []
    bad = [
        {"variants": "int8"},
        {"variants": [{"precision": "int8", "file": "../x.onnx", "sha256": "cd" * 32}]},
        {"variants": [{"precision": "int8", "file": "x.onnx", "sha256": "nope"}]},
        {"variants": [{"precision": "INT 8", "file": "x.onnx", "sha256": "cd" * 32}]},
        {"variants": [{"precision": "int8", "file": "x.onnx", "sha256": "cd" * 32,
                       "score": "high"}]},
        {"variants": [{"precision": "int8", "file": "x.onnx", "sha256": "cd" * 32},
                      {"precision": "int8", "file": "y.onnx", "sha256": "ef" * 32}]},
    ]
    for sidecar in bad:
        with pytest.raises(VariantError):
            sidecar_variants(sidecar)


def test_the_store_keeps_measurements_by_key_and_survives_a_bad_file(tmp_path: Path):
    store = ChoiceStore(tmp_path)
    measured = [m("fp32", 50, 0.86), Measured("int8", 30.5, 0.85, 0.851)]
    store.put("k1", "defects", measured, 0.02)
    assert ChoiceStore(tmp_path).get("k1") == (measured, 0.02)
    assert store.get("k2") is None
    store.path.write_text("{not json")
    assert store.get("k1") is None  # measured again, never a failed load
    store.put("k3", "defects", measured, 0.01)
    assert set(json.loads(store.path.read_text())["entries"]) == {"k3"}


def test_the_key_changes_with_any_file_digest_the_golden_set_or_the_threads(tmp_path: Path):
    golden = GoldenSpec(tmp_path / "g.tar", "map50", sha256="11" * 32)
    files = [VariantFile("fp32", tmp_path / "a", "aa" * 32),
             VariantFile("int8", tmp_path / "b", "bb" * 32)]
    config = SessionConfig(intra_op_threads=2)
    key = store_key(files, golden, config, "cpu", ["fp32", "int8"])
    assert key == store_key(files, golden, config, "cpu", ["int8", "fp32"])
    other = [files[0], VariantFile("int8", tmp_path / "b", "bc" * 32)]
    assert store_key(other, golden, config, "cpu", ["fp32", "int8"]) != key
    assert store_key(files, GoldenSpec(golden.path, "map50", sha256="12" * 32), config, "cpu",
                     ["fp32", "int8"]) != key
    assert store_key(files, golden, SessionConfig(intra_op_threads=1), "cpu",
                     ["fp32", "int8"]) != key
    assert store_key(files, golden, config, "cpu", ["fp32", "int8", "bf16"]) != key


async def _select(tmp_path: Path, files: list[VariantFile], pinned: str,
                  golden: GoldenSpec | None = None):
    return await select(model="m", kind="yolov8", files=files, golden=golden, pinned=pinned,
                        max_drop=None, default_max_drop=0.01, config=SessionConfig(),
                        provider="cpu", names=None, store=ChoiceStore(tmp_path))


async def test_a_pin_the_version_cannot_honour_falls_back_to_fp32_with_the_reason(tmp_path):
    fp32 = VariantFile("fp32", tmp_path / "model.onnx", "aa" * 32)
    int8 = VariantFile("int8", tmp_path / "model.int8.onnx", "bb" * 32)
    missing = await _select(tmp_path, [fp32], "int8")
    assert missing.file is fp32
    assert missing.choice.precision == "fp32"
    assert "pinned int8, but this version has no int8 variant" in missing.choice.reason
    # No golden set to verify it with: the pin is taken as the operator's word.
    pinned = await _select(tmp_path, [fp32, int8], "int8")
    assert (pinned.file, pinned.choice.precision) == (int8, "int8")
    assert pinned.choice.describe()["setting"] == "int8"
    assert "no golden set to verify it against" in pinned.choice.reason
    # auto with a variant but no golden set: fp32, nothing measured.
    unchecked = await _select(tmp_path, [fp32, int8], "auto")
    assert unchecked.choice.precision == "fp32"
    assert "no golden set" in unchecked.choice.reason
    assert not (tmp_path / "precision.json").exists()


def test_the_registry_is_the_extension_point_and_settings_follow_it(tmp_path, monkeypatch):
    paths = precision_paths()
    assert set(paths) >= {"fp32", "int8"}
    assert paths["fp32"].file == "fp32"
    assert precision_choices()[0] == "auto"
    with pytest.raises(SettingsError, match=r"models\[0\]\.precision"):
        load_settings(environ={}, overrides={
            "models": [{"name": "a", "path": "/x.onnx", "precision": "fp8"}]})
    # A path added to the registry (the way an OpenVINO bf16 path joins) is a valid pin.
    import agent.precision as precision

    monkeypatch.setattr(precision, "precision_paths",
                        lambda: {**paths, "bf16": PrecisionPath("fp32")})
    settings = load_settings(environ={}, overrides={
        "models": [{"name": "a", "path": "/x.onnx", "precision": "bf16"}]})
    assert settings.models[0].precision == "bf16"


def test_a_path_with_its_own_session_factory_is_rebuilt_through_it(tmp_path):
    """The thread layout rebuilds a session with other threads (inference.session.
    rebuild_session): a path whose sessions come from another factory (another runtime) gets
    its rebuilt sessions from that factory too, not from ONNX Runtime's default."""
    from agent.precision import build_runner
    from inference.session import create_session, file_digest, rebuild_session

    tiny = Path(__file__).resolve().parents[2] / "fixtures" / "models" / \
        "yolov8t-3cls-dynbatch-320x416.onnx"
    calls: list[int] = []

    def factory(path: Path, config: SessionConfig, digest: str):
        calls.append(config.intra_op_threads)
        return create_session(path, config, digest)

    runner = build_runner("yolov8", PrecisionPath("fp32", factory),
                          VariantFile("fp32", tiny, file_digest(tiny)),
                          SessionConfig(providers=("cpu",), intra_op_threads=1), None)
    again = rebuild_session(runner.loaded, SessionConfig(providers=("cpu",), intra_op_threads=2))
    assert calls == [1, 2]
    assert again.intra_op_threads == 2
    assert again.factory is factory
    # The default path keeps create_session's own rebuild.
    plain = build_runner("yolov8", PrecisionPath("fp32"), VariantFile("fp32", tiny, ""),
                         SessionConfig(providers=("cpu",), intra_op_threads=1), None)
    assert plain.loaded.factory is None
    assert plain.loaded.path == tiny


def test_the_openvino_paths_are_offered_only_where_enabled_on_a_cpu_node(monkeypatch):
    import inference.openvino_engine as engine

    monkeypatch.setattr(engine, "openvino_available", lambda: True)
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: True)
    paths = precision_paths()
    on_cpu = SessionConfig(providers=("cpu",), openvino=True)
    assert paths["fp32-openvino"].available(on_cpu)
    assert paths["bf16"].available(on_cpu)
    assert paths["bf16"].file == paths["fp32-openvino"].file == "fp32"  # the fp32 file, run
    assert not paths["bf16"].available(SessionConfig(providers=("cpu",)))  # not enabled
    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)
    assert not paths["bf16"].available(on_cpu)  # a CPU without bf16
    assert paths["fp32-openvino"].available(on_cpu)
    # No GPU here: a node whose chain starts at CUDA is what first_provider would say there.
    monkeypatch.setattr("agent.precision.first_provider", lambda config: "cuda")
    assert not paths["fp32-openvino"].available(on_cpu)  # a GPU node: ORT's GPU path serves
    monkeypatch.undo()
    monkeypatch.setattr(engine, "openvino_available", lambda: False)
    assert not paths["fp32-openvino"].available(on_cpu)  # not installed


def test_an_intel_gpu_or_npu_path_is_offered_only_where_openvino_sees_the_device(monkeypatch):
    """No Intel GPU or NPU here: the device list is what OpenVINO would answer on a node that
    has an integrated GPU."""
    import inference.openvino_engine as engine

    monkeypatch.setattr(engine, "openvino_available", lambda: True)
    monkeypatch.setattr(engine, "accelerators", lambda: ["GPU.0"])
    paths = precision_paths()
    on_cpu = SessionConfig(providers=("cpu",), openvino=True)
    assert paths["fp16-igpu"].available(on_cpu)
    assert not paths["fp16-npu"].available(on_cpu)
    assert not paths["fp16-igpu"].available(SessionConfig(providers=("cpu",)))  # not enabled
    monkeypatch.setattr(engine, "accelerators", lambda: [])
    assert not paths["fp16-igpu"].available(on_cpu)
