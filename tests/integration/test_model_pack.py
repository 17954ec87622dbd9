"""``edge-agent model pack`` and ``edge-agent model score`` as a publishing pipeline runs them:
a real process on real ONNX models (the bundled ones, the tiny test detector)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from support import TINY_MODEL

from inference.bundled import BUNDLE_ROOT, read_bundle
from inference.model_info import parse_names

DEFECTS = read_bundle(BUNDLE_ROOT / "defects")
FUSION = read_bundle(BUNDLE_ROOT / "fusion")


def edge_agent(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *map(str, args)], capture_output=True,
                          text=True, timeout=300, check=False)


def golden_folder(root: Path, names: list[str]) -> Path:
    """Bundled defects golden frames in the images/ + labels/ layout."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for name in names:
        shutil.copy(DEFECTS.golden_path / f"{name}.jpg", root / "images")
        shutil.copy(DEFECTS.golden_path / f"{name}.txt", root / "labels")
    return root


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pack_builds_a_verified_version_directory_whose_score_is_the_bundled_one(tmp_path):
    """The whole bundled golden set (flat folder): the packed score is the one the training
    recorded, so pack scores with the same pipeline."""
    out = tmp_path / "defects-1.1.0"
    done = edge_agent("model", "pack", DEFECTS.model_path, DEFECTS.golden_path, "--out", out,
                      "--name", "defects", "--version", "1.1.0")
    assert done.returncode == 0, done.stderr
    assert "scoring golden.tar: 50/50" in done.stderr
    result = json.loads(done.stdout)
    sidecar = json.loads((out / "model.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["golden.tar", "model.json", "model.onnx"]
    assert (sidecar["name"], sidecar["version"], sidecar["kind"]) == ("defects", "1.1.0", "yolov8")
    assert sidecar["sha256"] == sha256(out / "model.onnx") == DEFECTS.sha256
    metadata = {p.key: p.value for p in onnx.load(str(DEFECTS.model_path)).metadata_props}
    assert sidecar["labels"] == list(parse_names(metadata["names"]).values())
    golden = sidecar["golden"]
    assert golden["sha256"] == sha256(out / "golden.tar")
    assert (golden["file"], golden["metric"], golden["frames"]) == ("golden.tar", "map50", 50)
    assert golden["score"] == result["score"]
    assert abs(golden["score"] - DEFECTS.golden_score) < 1e-4, golden
    with tarfile.open(out / "golden.tar") as tar:
        assert len(tar.getnames()) == 100
    # What a pipeline runs before pushing: the archive scores the same as the folder.
    scored = edge_agent("model", "score", out / "model.onnx", out / "golden.tar")
    assert scored.returncode == 0, scored.stderr
    assert json.loads(scored.stdout)["score"] == golden["score"]


def test_a_tensor_model_packs_with_its_npz_and_scores_its_accuracy(tmp_path):
    out = tmp_path / "fusion"
    done = edge_agent("model", "pack", FUSION.model_path, FUSION.golden_path, "--out", out)
    assert done.returncode == 0, done.stderr
    sidecar = json.loads((out / "model.json").read_text())
    assert sidecar["kind"] == "tensor"
    assert sidecar["version"] == FUSION.sha256[:12]
    assert sidecar["golden"]["file"] == "golden.npz"
    assert sidecar["golden"]["sha256"] == sha256(FUSION.golden_path)
    assert sidecar["golden"]["score"] == FUSION.golden_score


def tiny_case(tmp_path: Path, case: str) -> tuple[Path, Path, str]:
    """(model, golden set, the message) for one user error."""
    model, golden = TINY_MODEL, golden_folder(tmp_path / "golden", ["000", "001"])
    if case == "missing labels":
        (golden / "labels" / "001.txt").unlink()
        return model, golden, "image images/001.jpg has no labels file labels/001.txt"
    if case == "class out of range":
        (golden / "labels" / "000.txt").write_text("3 0.5 0.5 0.2 0.2\n")  # the tiny one has 3
        return model, golden, "labels/000.txt has class 3, but the model has 3 classes (0..2)"
    if case == "unreadable image":
        (golden / "images" / "000.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 64)
        return model, golden, "image images/000.jpg is unreadable"
    if case == "missing model":
        return tmp_path / "nope.onnx", golden, "nope.onnx not found"
    if case == "npz for a detector":
        return model, FUSION.golden_path, "a yolov8 model's golden set is a folder or tar"
    with np.load(FUSION.golden_path) as data:
        arrays = {k: data[k][:8] for k in data.files}
    if case == "wrong npz names":
        arrays["sensor"] = arrays.pop("sensors")
        message = "do not match the model's inputs ['sensors', 'defect_rate'] (missing ['sensors'])"
    else:
        arrays["sensors"] = arrays["sensors"][:, :, :5]
        message = "input 'sensors' has shape [8, 256, 5], the model takes [-1, 256, 6]"
    np.savez(tmp_path / "golden.npz", **arrays)
    return FUSION.model_path, tmp_path / "golden.npz", message


CASES = ["missing labels", "class out of range", "unreadable image", "missing model",
         "npz for a detector", "wrong npz names", "wrong npz shape"]


# pack runs the same checks as score: two of its cases prove it reports them the same way.
@pytest.mark.parametrize(("command", "case"), [*(("score", c) for c in CASES),
                                               ("pack", "missing labels"),
                                               ("pack", "wrong npz shape")])
def test_a_user_error_is_one_clear_line_and_exit_status_1(tmp_path, case, command):
    model, golden, message = tiny_case(tmp_path, case)
    extra = ["--out", str(tmp_path / "out")] if command == "pack" else []
    done = edge_agent("model", command, model, golden, *extra)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert message in done.stderr, done.stderr
    assert done.stdout == ""
    assert not (tmp_path / "out" / "model.json").exists()
