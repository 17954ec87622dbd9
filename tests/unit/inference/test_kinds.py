"""Telling a model's kind from its graph (``kind: auto``, the default for ``--model``)."""

from __future__ import annotations

import pytest
from support import COCO_MODEL, TINY_MODEL

from inference.bundled import BUNDLE_ROOT
from inference.errors import ModelLoadError
from inference.kinds import sniff_kind


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        (BUNDLE_ROOT / "defects" / "model.onnx", "yolov8"),
        (TINY_MODEL, "yolov8"),  # dynamic batch, 3 classes
        (COCO_MODEL, "yolov8"),
        (BUNDLE_ROOT / "fusion" / "model.onnx", "tensor"),  # two inputs, 3-D sensors
    ],
)
def test_the_kind_is_read_off_the_graph(path, kind):
    assert sniff_kind(path) == kind


def test_a_file_that_is_no_onnx_graph_is_a_load_error(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a graph")
    with pytest.raises(ModelLoadError, match=r"onnxruntime cannot load junk\.onnx"):
        sniff_kind(junk)
