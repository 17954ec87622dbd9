"""The quantizer's pre-processing with real ONNX Runtime tools (the full ``pack --int8`` runs in
tests/integration/test_precision_variants.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inference.quantize import QuantizeError, _pre_process, quantize_int8

TINY = Path(__file__).resolve().parents[2] / "fixtures" / "models" / \
    "yolov8t-3cls-dynbatch-320x416.onnx"


def test_a_failed_symbolic_pass_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """ORT's symbolic shape inference, when it cannot finish (here: asked not to merge the
    dynamic batch symbols), saves its partial model and weights into the working directory.
    The fallback still prepares the model, and the user's directory stays as it was."""
    from onnxruntime.quantization import quant_pre_process

    def without_merge(model: str, out: str, auto_merge: bool = False,
                      skip_symbolic_shape: bool = False) -> None:
        quant_pre_process(model, out, skip_symbolic_shape=skip_symbolic_shape)

    user = tmp_path / "user"
    user.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(user)
    _pre_process(without_merge, TINY, work / "prepared.onnx")
    assert (work / "prepared.onnx").stat().st_size > 0
    assert list(user.iterdir()) == []
    assert Path.cwd() == user
    assert os.getcwd() == str(user)


def test_no_calibration_input_is_a_clear_error(tmp_path):
    with pytest.raises(QuantizeError, match="no calibration input"):
        quantize_int8(TINY, tmp_path / "x.onnx", iter([]))
    assert not (tmp_path / "x.onnx").exists()
