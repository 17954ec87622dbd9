from __future__ import annotations

from dataclasses import dataclass

import pytest

from inference.errors import ModelLoadError
from inference.model_info import detector_spec, parse_names


@dataclass
class Arg:
    name: str
    shape: list


def test_static_ultralytics_export():
    spec = detector_spec(
        [Arg("images", [1, 3, 640, 640])],
        [Arg("output0", [1, 6, 8400])],
        {"names": "{0: 'Normal', 1: 'Fall'}"},
    )
    assert (spec.input_h, spec.input_w, spec.fixed_batch, spec.num_classes) == (640, 640, 1, 2)
    assert spec.names == {0: "Normal", 1: "Fall"}


def test_dynamic_axes_take_the_size_from_metadata():
    spec = detector_spec(
        [Arg("images", ["batch", 3, "height", "width"])],
        [Arg("output0", ["batch", 84, "anchors"])],
        {"imgsz": "[480, 640]"},
    )
    assert (spec.input_h, spec.input_w, spec.fixed_batch) == (480, 640, None)
    assert spec.names[79] == "79"


def test_sidecar_names_win_over_metadata():
    spec = detector_spec(
        [Arg("images", [1, 3, 320, 320])],
        [Arg("output0", [1, 7, 2100])],
        {"names": "{0: 'a', 1: 'b', 2: 'c'}"},
        {0: "scratch", 1: "dent", 2: "hole"},
    )
    assert spec.names == {0: "scratch", 1: "dent", 2: "hole"}


@pytest.mark.parametrize(
    ("inputs", "outputs", "meta"),
    [
        ([Arg("a", [1, 3, 640, 640]), Arg("b", [1])], [Arg("o", [1, 6, 8400])], {}),
        ([Arg("a", [1, 640, 640])], [Arg("o", [1, 6, 8400])], {}),
        ([Arg("a", [1, 3, 640, 640])], [Arg("o", [1, 8400, 6])], {}),  # transposed output
        ([Arg("a", [1, 3, "h", "w"])], [Arg("o", [1, 6, 8400])], {}),  # no size anywhere
        ([Arg("a", [1, 3, 640, 640])], [Arg("o", [1, 4, 8400])], {}),  # no class rows
    ],
)
def test_models_that_are_not_yolov8_detectors_are_refused(inputs, outputs, meta):
    with pytest.raises(ModelLoadError):
        detector_spec(inputs, outputs, meta)


def test_parse_names_is_literal_only():
    assert parse_names("{0: 'x'}") == {0: "x"}
    assert parse_names("['a', 'b']") == {0: "a", 1: "b"}
    assert parse_names("__import__('os').system('true')") == {}
    assert parse_names(None) == {}
