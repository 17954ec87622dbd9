"""Golden sets: the archive and folder reader, the .npz reader, each refusal naming its cause."""

from __future__ import annotations

import hashlib
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from inference.bundled import BUNDLE_ROOT, read_bundle
from inference.errors import GoldenSetError
from inference.golden import (
    GoldenSpec,
    check_classes,
    golden_spec,
    load_detection_golden,
    read_tensor_golden,
    tensor_score,
)
from inference.golden_pack import write_detection_archive
from inference.tensor import TensorModel, TensorSpec

DEFECTS = read_bundle(BUNDLE_ROOT / "defects")
FUSION = read_bundle(BUNDLE_ROOT / "fusion")
NAMES = ("000", "001", "002")


def nested(tmp_path: Path, names=NAMES) -> Path:
    """A few bundled golden frames in the images/ + labels/ layout."""
    root = tmp_path / "golden"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in names:
        shutil.copy(DEFECTS.golden_path / f"{name}.jpg", root / "images" / f"{name}.jpg")
        shutil.copy(DEFECTS.golden_path / f"{name}.txt", root / "labels" / f"{name}.txt")
    return root


def test_an_archive_holds_the_same_frames_as_its_folder_and_packs_to_the_same_bytes(tmp_path):
    folder = nested(tmp_path)
    frames = load_detection_golden(folder)
    assert [f.name for f in frames] == list(NAMES)
    assert all(f.truths for f in frames)
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    write_detection_archive(folder, frames, first)
    write_detection_archive(folder, load_detection_golden(folder), second)
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        assert sorted(tar.getnames()) == sorted(
            [f"images/{n}.jpg" for n in NAMES] + [f"labels/{n}.txt" for n in NAMES])
    from_tar = load_detection_golden(first)
    assert [(f.name, f.data, f.truths) for f in from_tar] == \
        [(f.name, f.data, f.truths) for f in frames]


def test_the_bundled_flat_folder_reads_like_the_nested_layout(tmp_path):
    flat = {f.name: f.truths for f in load_detection_golden(DEFECTS.golden_path)}
    assert len(flat) == 50
    for frame in load_detection_golden(nested(tmp_path)):
        assert frame.truths == flat[frame.name]


def test_a_label_box_is_scaled_to_the_image_in_pixels(tmp_path):
    root = nested(tmp_path, ["000"])
    (root / "labels" / "000.txt").write_text("2 0.5 0.5 0.5 0.25\n\n")
    (frame,) = load_detection_golden(root)
    assert [(t.class_id, t.box) for t in frame.truths] == [(2, (160.0, 180.0, 480.0, 300.0))]


def test_an_image_without_labels_is_refused_by_name(tmp_path):
    root = nested(tmp_path)
    (root / "labels" / "001.txt").unlink()
    with pytest.raises(GoldenSetError, match=r"images/001\.jpg has no labels file labels/001\.txt"):
        load_detection_golden(root)


@pytest.mark.parametrize("line", ["0 0.5 0.5 0.1", "x 0.5 0.5 0.1 0.1", "0 0.5 1.5 0.1 0.1",
                                  "-1 0.5 0.5 0.1 0.1"])
def test_a_malformed_label_line_is_refused_with_its_file_and_line(tmp_path, line):
    root = nested(tmp_path)
    (root / "labels" / "002.txt").write_text(f"1 0.5 0.5 0.1 0.1\n{line}\n")
    with pytest.raises(GoldenSetError, match=r"labels/002.txt line 2: expected 'class cx cy w h'"):
        load_detection_golden(root)


def test_an_unreadable_image_is_refused_by_name(tmp_path):
    root = nested(tmp_path)
    (root / "images" / "001.jpg").write_bytes(b"not an image at all")
    with pytest.raises(GoldenSetError, match=r"image images/001\.jpg is unreadable"):
        load_detection_golden(root)


def test_a_file_that_is_not_a_tar_and_an_empty_set_are_refused(tmp_path):
    bad = tmp_path / "golden.tar"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(GoldenSetError, match="not a readable tar archive"):
        load_detection_golden(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(GoldenSetError, match="has no images"):
        load_detection_golden(tmp_path / "empty")
    with pytest.raises(GoldenSetError, match="does not exist"):
        load_detection_golden(tmp_path / "missing.tar")


def test_a_class_the_model_lacks_is_refused(tmp_path):
    root = nested(tmp_path, ["000"])
    (root / "labels" / "000.txt").write_text("3 0.5 0.5 0.1 0.1\n")
    frames = load_detection_golden(root)
    check_classes(frames, 4, "g")
    with pytest.raises(GoldenSetError, match="has class 3, but the model has 3 classes"):
        check_classes(frames, 3, "g")


@pytest.fixture(scope="module")
def fusion() -> TensorModel:
    return TensorModel.load(FUSION.model_path)


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path


def fusion_arrays(rows: int = 12) -> dict[str, np.ndarray]:
    with np.load(FUSION.golden_path) as data:
        return {"sensors": data["sensors"][:rows], "defect_rate": data["defect_rate"][:rows],
                "labels": data["label"][:rows]}


def test_a_tensor_set_is_cast_to_the_model_dtypes_and_the_bundled_label_key_still_reads(
    tmp_path, fusion
):
    golden = read_tensor_golden(FUSION.golden_path, fusion.inputs, fusion.outputs)
    assert golden.rows == 300
    assert golden.inputs["sensors"].dtype == np.float32  # stored as FP16
    assert golden.labels is not None
    assert golden.labels.shape == (300,)
    own = read_tensor_golden(write_npz(tmp_path / "g.npz", **fusion_arrays()), fusion.inputs,
                             fusion.outputs)
    assert own.rows == 12


@pytest.mark.parametrize(("change", "message"), [
    (lambda a: a.pop("defect_rate"), r"missing \['defect_rate'\]"),
    (lambda a: a.update(sensor=a.pop("sensors")),
     r"missing \['sensors'\].*unexpected \['sensor'\]"),
    (lambda a: a.update(sensors=a["sensors"][:, :100]),
     r"input 'sensors' has shape \[12, 100, 6\]"),
    (lambda a: a.pop("labels"), "neither 'labels' nor 'expected_<output>'"),
    (lambda a: a.update(labels=a["labels"][:5]), "the same number of rows"),
    (lambda a: a.update(labels=a["labels"].astype(np.float32)), "one integer per row"),
])
def test_a_tensor_set_that_does_not_fit_the_model_is_refused(tmp_path, fusion, change, message):
    arrays = fusion_arrays()
    change(arrays)
    path = write_npz(tmp_path / "g.npz", **arrays)
    with pytest.raises(GoldenSetError, match=message):
        read_tensor_golden(path, fusion.inputs, fusion.outputs)


def test_a_file_that_is_not_an_npz_is_refused(tmp_path, fusion):
    bad = tmp_path / "golden.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(GoldenSetError, match=r"not a readable \.npz"):
        read_tensor_golden(bad, fusion.inputs, fusion.outputs)


def test_expected_outputs_score_the_rows_that_match_within_tolerance(tmp_path):
    inputs = (TensorSpec("x", "FP32", (-1, 2)),)
    outputs = (TensorSpec("y", "FP32", (-1, 2)),)
    expected = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]], np.float32)
    path = write_npz(tmp_path / "g.npz", x=np.zeros((4, 2), np.float32), expected_y=expected)
    golden = read_tensor_golden(path, inputs, outputs)
    got = expected.copy()
    got[1, 0] += 0.5  # one row off
    got[2, 1] += 1e-6  # within tolerance
    assert tensor_score(golden, {"y": got}, "y", rtol=1e-3, atol=1e-5) == 0.75


def test_labels_beyond_the_first_outputs_classes_are_refused(tmp_path):
    inputs = (TensorSpec("x", "FP32", (-1, 2)),)
    path = write_npz(tmp_path / "g.npz", x=np.zeros((2, 2), np.float32),
                     labels=np.array([0, 3]))
    golden = read_tensor_golden(path, inputs, ())
    with pytest.raises(GoldenSetError, match="output 'y' has 3 classes"):
        tensor_score(golden, {"y": np.zeros((2, 3), np.float32)}, "y", 1e-3, 1e-5, "g.npz")
    assert tensor_score(golden, {"y": np.eye(4, dtype=np.float32)[[0, 3]]}, "y", 0, 0) == 1.0


def test_the_sidecar_field_names_file_metric_digest_and_packed_score(tmp_path):
    digest = hashlib.sha256(b"x").hexdigest()
    spec = golden_spec({"file": "golden.tar", "sha256": f"sha256:{digest}", "metric": "mAP50",
                        "score": 0.9, "scoring": {"conf": 0.01, "other": 1}}, tmp_path / "g")
    assert (spec.metric, spec.sha256, spec.packed_score) == ("map50", digest, 0.9)
    assert (spec.setting("conf"), spec.setting("iou")) == (0.01, 0.7)
    assert spec.same_set(GoldenSpec(tmp_path / "elsewhere", "map50", digest))
    assert not spec.same_set(GoldenSpec(tmp_path / "g", "map50"))
    for bad in ({"file": "g.tar", "metric": "f1"}, {"metric": "map50"}, "golden.tar"):
        with pytest.raises(GoldenSetError):
            golden_spec(bad, tmp_path / "g")


def test_an_archive_member_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    folder = nested(tmp_path, ["000"])
    archive = tmp_path / "golden.tar"
    write_detection_archive(folder, load_detection_golden(folder), archive)
    monkeypatch.setattr("inference.golden.MAX_FILE_BYTES", 1000)  # the frame is ~24 kB
    with pytest.raises(GoldenSetError, match=r"images/000\.jpg is larger than 1000 bytes"):
        load_detection_golden(archive)
