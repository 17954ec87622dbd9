"""The bundled models on disk: each file is what its sidecar says it is."""

from __future__ import annotations

import hashlib

import onnx
import pytest

from inference.bundled import BUNDLED_NAMES, bundled_models, read_bundle
from inference.errors import ModelLoadError


@pytest.mark.parametrize("bundle", bundled_models(), ids=lambda b: b.name)
def test_sidecar_matches_the_model_file(bundle):
    data = bundle.model_path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == bundle.sha256
    assert len(data) == bundle.sidecar["size_bytes"]
    model = onnx.load_from_string(data)
    # onnxruntime 1.23 (the newest for Python 3.10 / JetPack 6) loads IR <= 11.
    assert model.ir_version <= 11
    assert bundle.golden_path.exists()
    assert bundle.sidecar["golden"]["score"] >= (0.8 if bundle.kind == "yolov8" else 0.9)


def test_names_and_kinds():
    assert [b.name for b in bundled_models()] == list(BUNDLED_NAMES) == ["defects", "fusion"]
    assert {b.name: b.kind for b in bundled_models()} == {"defects": "yolov8", "fusion": "tensor"}


def test_a_missing_or_broken_bundle_is_a_clear_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="unreadable"):
        read_bundle(tmp_path)
    (tmp_path / "model.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="unreadable"):
        read_bundle(tmp_path)
