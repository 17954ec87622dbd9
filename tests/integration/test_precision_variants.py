"""Lower-precision variants end to end: ``edge-agent model pack --int8`` on the project's own
detector (real ONNX Runtime quantization), the variant carried over a ``file://`` share and a
real OCI registry, and the node's gate choosing what serves on the node's own measurements.

No test asserts a timing: which of two qualified precisions is faster is the node's
measurement; the tests check the choice follows the rule on those measurements, and that a
variant over ``max_drop`` never serves whatever its speed."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from lifecycle_helpers import (
    AUTH,
    DEFECTS,
    FUSION,
    assert_follows_the_rule,
    cache_import,
    defects_onnx,
    first_sync_done,
    fusion_model,
    golden_folder,
    models,
    summary,
    write_manifest,
)
from onnx import numpy_helper

# slow: packing, quantising, several daemons: a minute (once per CI run, not on 3.10)
pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pack_int8(onnx_file: Path, golden: Path, out: Path, version: str, name: str = "defects",
              inputs: int = 12) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "agent", "model", "pack", str(onnx_file), str(golden), "--out",
         str(out), "--name", name, "--version", version, "--int8"],
        capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "quantizing" in done.stderr, done.stderr
    assert f"calibrated on {inputs} inputs" in done.stderr, done.stderr
    return json.loads((out / "model.json").read_text())


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> Path:
    """Version 1.1.0 of the bundled detector packed with an int8 variant (12 golden frames)."""
    root = tmp_path_factory.mktemp("int8")
    pack_int8(defects_onnx(root / "d.onnx", "1.1.0"), golden_folder(root / "g"),
              root / "v110", "1.1.0")
    return root / "v110"


def broken_copy(packed: Path, out: Path, version: str) -> dict:
    """Another version (its own fp32 digest) whose int8 file calls two classes by each
    other's names: the head's quantised weights, scales and biases of classes 1 and 2
    exchanged. Its sidecar still claims the good variant's packed score."""
    out.mkdir()
    defects_onnx(out / "model.onnx", version)
    shutil.copy(packed / "golden.tar", out)
    model = onnx.load(str(packed / "model.int8.onnx"))
    swapped = 0
    for init in model.graph.initializer:
        if ".cv3." in init.name and (".2.weight" in init.name or ".2.bias" in init.name):
            array = numpy_helper.to_array(init).copy()
            if array.ndim and array.shape[0] == 4:
                array[[1, 2]] = array[[2, 1]]
                init.CopyFrom(numpy_helper.from_array(array, init.name))
                swapped += 1
    assert swapped >= 6  # weights and biases (values, scales, zero points) of three scales
    onnx.save(model, str(out / "model.int8.onnx"))
    sidecar = json.loads((packed / "model.json").read_text())
    sidecar.update(version=version, sha256=sha256(out / "model.onnx"))
    sidecar["variants"][0]["sha256"] = sidecar["sha256"]
    sidecar["variants"][1]["sha256"] = sha256(out / "model.int8.onnx")
    (out / "model.json").write_text(json.dumps(sidecar))
    return sidecar


def defects_settings(make, registry=None, keep: int = 3, **extra):
    models_ = [{"name": "defects", "bundled": "defects", **extra}]
    more = {"lifecycle.insecure_registries": [registry.host]} if registry is not None else {}
    return make(models=models_, **{"lifecycle.keep_versions": keep}, **more)


async def sync(client) -> str:
    resp = await client.post("/v1/admin/sync", headers=AUTH)
    assert resp.status == 200
    return next(iter((await resp.json())["report"].values()))


def test_pack_int8_writes_a_quantised_variant_scored_like_any_version(packed):
    sidecar = json.loads((packed / "model.json").read_text())
    assert sorted(p.name for p in packed.iterdir()) == [
        "golden.tar", "model.int8.onnx", "model.json", "model.onnx"]
    fp32, int8 = sidecar["variants"]
    assert fp32 == {"precision": "fp32", "file": "model.onnx", "sha256": sidecar["sha256"],
                    "score": sidecar["golden"]["score"]}
    assert (int8["precision"], int8["file"]) == ("int8", "model.int8.onnx")
    assert int8["sha256"] == sha256(packed / "model.int8.onnx")
    assert int8["calibration_inputs"] == 12
    graph = onnx.load(str(packed / "model.int8.onnx")).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ
    # The head after the last convolutions stays float: its output is not dequantised.
    producer = {o: n for n in graph.node for o in n.output}
    assert producer[graph.output[0].name].op_type != "DequantizeLinear"
    # A real quantised model, close to fp32 on its golden set: and the score recorded is what
    # `model score` measures on it again.
    assert 0.5 < int8["score"] <= 1.0
    assert abs(int8["score"] - fp32["score"]) < 0.05, sidecar["variants"]
    done = subprocess.run([sys.executable, "-m", "agent", "model", "score",
                           str(packed / "model.int8.onnx"), str(packed / "golden.tar")],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["score"] == int8["score"]


def test_pack_int8_errors_are_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "agent", "model", "pack", str(DEFECTS.model_path),
         str(DEFECTS.golden_path), "--out", str(tmp_path / "o"), "--calibration",
         str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == "edge-agent: --calibration is for --int8"


async def test_a_file_share_variant_is_measured_chosen_by_the_rule_cached_and_collected(
    packed, lifecycle, client_factory, tmp_path, caplog
):
    caplog.set_level(logging.INFO)
    sidecar = json.loads((packed / "model.json").read_text())
    manifest, make = lifecycle
    settings = defects_settings(make, keep=1)
    client = await client_factory(settings)
    await first_sync_done(client)
    write_manifest(manifest, (packed / "model.json").as_uri(), model="defects", min_score=0.5,
                   max_drop=0.05)
    report = await sync(client)
    assert report.startswith("swapped to 1.1.0"), report
    defects = (await models(client))["defects"]
    choice = defects["precision_choice"]
    assert defects["precision"] == choice["serving"]
    assert (choice["setting"], choice["max_drop"], choice["measured"]) == ("auto", 0.05, "now")
    assert set(choice["variants"]) == {"fp32", "int8"}
    for name, v in choice["variants"].items():
        assert v["median_ms"] > 0, (name, v)
        assert 0.5 < v["score"] <= 1.0, (name, v)
    # Measured on this node with the packing pipeline: the scores are the packed ones.
    assert choice["variants"]["int8"]["score"] == pytest.approx(
        sidecar["variants"][1]["score"], abs=1e-6)
    assert choice["variants"]["int8"]["packed_score"] == sidecar["variants"][1]["score"]
    assert_follows_the_rule(choice, 0.05)
    # The version's validation score is the serving precision's.
    served_score = choice["variants"][choice["serving"]]["score"]
    assert defects["validation"]["score"] == pytest.approx(served_score, abs=1e-6)
    got = await summary(client)
    info = [labels for (name, labels) in got if name == "edge_model_info"]
    assert ("precision", choice["serving"]) in info[0], info
    blobs = settings.state_dir / "models" / "blobs" / "sha256"
    assert (blobs / sidecar["variants"][1]["sha256"]).is_file()
    assert (settings.state_dir / "precision.json").is_file()
    measuring = [r for r in caplog.records if r.getMessage() == "measuring precisions"]
    assert len(measuring) == 1

    # A restart serves the cached version, and reuses the measurements: nothing re-measured.
    await client.close()
    caplog.clear()
    client = await client_factory(settings)
    again = (await models(client))["defects"]
    assert again["version"] == "1.1.0"
    assert again["precision_choice"]["measured"] == "cached"
    assert again["precision_choice"]["variants"] == choice["variants"]
    assert again["precision"] == choice["serving"]
    assert again["precision_choice"]["max_drop"] == 0.05  # the limit it was chosen under
    assert not [r for r in caplog.records if r.getMessage() == "measuring precisions"]

    # Another version (another digest) is measured anew; its int8 loses two classes, so fp32
    # serves it however fast its int8 ran; the old version's variant leaves the cache with it.
    await first_sync_done(client)
    broken = broken_copy(packed, tmp_path / "v120", "1.2.0")
    write_manifest(manifest, (tmp_path / "v120" / "model.json").as_uri(), model="defects",
                   min_score=0.0, max_drop=0.05)
    caplog.clear()
    report = await sync(client)
    assert report.startswith("swapped to 1.2.0"), report
    defects = (await models(client))["defects"]
    choice = defects["precision_choice"]
    assert choice["measured"] == "now"
    assert defects["precision"] == choice["serving"] == "fp32"
    int8 = choice["variants"]["int8"]
    assert choice["variants"]["fp32"]["score"] - int8["score"] > 0.05, choice
    assert "int8 scored" in choice["reason"]
    assert "max_drop 0.05" in choice["reason"]
    assert int8["packed_score"] == broken["variants"][1]["score"]  # its claim, not believed
    assert len([r for r in caplog.records if r.getMessage() == "measuring precisions"]) == 1
    assert (blobs / broken["variants"][1]["sha256"]).is_file()
    assert not (blobs / sidecar["variants"][1]["sha256"]).exists()  # keep_versions: 1


async def test_a_pinned_precision_is_served_and_one_the_version_lacks_falls_back(
    packed, lifecycle, client_factory, tmp_path
):
    manifest, make = lifecycle
    # The bundled defects has no int8 variant: fp32 serves, and /v1/models says why.
    client = await client_factory(defects_settings(make, precision="int8"))
    await first_sync_done(client)
    defects = (await models(client))["defects"]
    assert defects["precision"] == "fp32"
    assert "pinned int8, but this version has no int8 variant" in \
        defects["precision_choice"]["reason"]
    write_manifest(manifest, (packed / "model.json").as_uri(), model="defects", min_score=0.5,
                   max_drop=0.05)
    report = await sync(client)
    assert report.startswith("swapped to 1.1.0"), report
    defects = (await models(client))["defects"]
    assert defects["precision"] == "int8"
    choice = defects["precision_choice"]
    assert (choice["setting"], choice["serving"]) == ("int8", "int8")
    assert choice["reason"].startswith("int8: pinned"), choice
    assert choice["variants"]["fp32"]["score"] - choice["variants"]["int8"]["score"] <= 0.05
    frame = (DEFECTS.golden_path / "001.jpg").read_bytes()
    resp = await client.post("/v1/models/defects/detect", data=frame,
                             headers={"Content-Type": "image/jpeg"})
    assert resp.status == 200
    body = await resp.json()
    assert body["version"] == "1.1.0", body
    assert body["detections"], body
    # A pinned variant that loses accuracy beyond max_drop does not serve either.
    broken_copy(packed, tmp_path / "v120", "1.2.0")
    write_manifest(manifest, (tmp_path / "v120" / "model.json").as_uri(), model="defects",
                   min_score=0.0, max_drop=0.05)
    report = await sync(client)
    assert report.startswith("swapped to 1.2.0"), report
    defects = (await models(client))["defects"]
    assert defects["precision"] == "fp32"
    assert "pinned int8, but it scored" in defects["precision_choice"]["reason"]


async def test_an_oci_artifact_carries_the_variant_as_a_layer(
    packed, lifecycle, registry, client_factory
):
    sidecar = json.loads((packed / "model.json").read_text())
    files = ("model.onnx", "model.json", "golden.tar", "model.int8.onnx")
    ref = registry.push(packed, "models/defects:1.1.0", files)
    partial = registry.push(packed, "models/defects:1.1.0-partial", files[:3])
    manifest, make = lifecycle
    settings = defects_settings(make, registry)
    client = await client_factory(settings)
    await first_sync_done(client)
    # An artifact whose sidecar lists a variant it does not carry is refused.
    write_manifest(manifest, partial, model="defects", min_score=0.5, max_drop=0.05)
    report = await sync(client)
    assert report.startswith("refused"), report
    assert "the artifact has no 'model.int8.onnx' layer" in report, report
    write_manifest(manifest, ref, model="defects", min_score=0.5, max_drop=0.05)
    report = await sync(client)
    assert report.startswith("swapped to 1.1.0"), report
    defects = (await models(client))["defects"]
    assert set(defects["precision_choice"]["variants"]) == {"fp32", "int8"}
    assert_follows_the_rule(defects["precision_choice"], 0.05)
    blobs = settings.state_dir / "models" / "blobs" / "sha256"
    assert (blobs / sidecar["variants"][1]["sha256"]).is_file()
    state = json.loads((settings.state_dir / "models" / "state.json").read_text())
    assert state["models"]["defects"][0]["sidecar"]["variants"] == sidecar["variants"]


async def test_an_air_gapped_import_carries_the_variant_and_the_node_starts_on_it(
    packed, lifecycle, client_factory, tmp_path
):
    """``cache import`` stores the variant with its version; the node starts on the version
    with no network and chooses under the node's own limit (``precision_max_drop``)."""
    sidecar = json.loads((packed / "model.json").read_text())
    manifest, make = lifecycle
    settings = defects_settings(make, **{})
    cache_import(packed / "model.json", settings.state_dir)
    blobs = settings.state_dir / "models" / "blobs" / "sha256"
    assert (blobs / sidecar["variants"][1]["sha256"]).is_file()
    write_manifest(manifest, (tmp_path / "nowhere" / "model.json").as_uri())  # unreachable
    client = await client_factory(settings)
    defects = (await models(client))["defects"]
    assert defects["version"] == "1.1.0"
    choice = defects["precision_choice"]
    assert (choice["max_drop"], choice["measured"]) == (0.01, "now")
    assert set(choice["variants"]) == {"fp32", "int8"}
    assert_follows_the_rule(choice, 0.01)


async def test_a_variant_that_cannot_load_is_reported_and_never_chosen(tmp_path):
    """A variant file that is no model (its sha256 right: the publisher's mistake, not the
    network's) is measured as failed, named in the reason, and fp32 serves."""
    from agent.precision import ChoiceStore, VariantFile, select
    from inference.golden import GoldenSpec
    from inference.session import SessionConfig

    garbage = tmp_path / "model.int8.onnx"
    garbage.write_bytes(b"not an onnx model")
    golden = GoldenSpec(golden_folder(tmp_path / "g", frames=["000", "001", "002"]), "map50",
                        scoring={"conf": 0.001, "iou": 0.7})
    selected = await select(
        model="defects", kind="yolov8",
        files=[VariantFile("fp32", DEFECTS.model_path, DEFECTS.sha256),
               VariantFile("int8", garbage, sha256(garbage))],
        golden=golden, pinned="auto", max_drop=1.0, default_max_drop=0.01,
        config=SessionConfig(providers=("cpu",), intra_op_threads=1), provider="cpu",
        names=None, store=ChoiceStore(tmp_path / "state"))
    choice = selected.choice
    assert (choice.precision, selected.file.path) == ("fp32", DEFECTS.model_path)
    failed = {m.precision: m for m in choice.measured}["int8"]
    assert "onnxruntime cannot load" in failed.error
    assert "int8 onnxruntime cannot load" in choice.reason
    assert {m.precision: m for m in choice.measured}["fp32"].score > 0.5


async def test_a_tensor_model_whose_int8_loses_accuracy_serves_fp32(
    lifecycle, client_factory, tmp_path
):
    """The bundled fusion model's feature vector spans ranges one uint8 scale cannot hold:
    really quantised (its 300 golden rows as calibration), it loses a third of its accuracy.
    Packed, published and synced, the node measures that and serves fp32."""
    onnx.save(fusion_model("1.0.1"), str(tmp_path / "f.onnx"))
    sidecar = pack_int8(tmp_path / "f.onnx", FUSION.golden_path, tmp_path / "v101", "1.0.1",
                        name="fusion", inputs=300)
    fp32, int8 = sidecar["variants"]
    assert (fp32["file"], int8["file"], int8["calibration_inputs"]) == (
        "model.onnx", "model.int8.onnx", 300)
    assert fp32["score"] - int8["score"] > 0.1, sidecar["variants"]  # as packed
    manifest, make = lifecycle
    client = await client_factory(make())
    await first_sync_done(client)
    write_manifest(manifest, (tmp_path / "v101" / "model.json").as_uri(), min_score=0.9,
                   max_drop=0.02)
    report = await sync(client)
    assert report.startswith("swapped to 1.0.1"), report
    fusion = (await models(client))["fusion"]
    choice = fusion["precision_choice"]
    assert fusion["precision"] == choice["serving"] == "fp32"
    assert choice["variants"]["int8"]["score"] == pytest.approx(int8["score"], abs=1e-6)
    assert "int8 scored" in choice["reason"], choice
    assert fusion["validation"]["score"] == pytest.approx(fp32["score"], abs=1e-6)
