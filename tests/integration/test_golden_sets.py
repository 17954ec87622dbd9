"""Golden sets that travel with a version: packed with ``edge-agent model pack``, pushed with
ORAS to a real registry (or put on a ``file://`` share), synced by the daemon, gated on their
own golden set; a version without one refused under ``require_golden`` or served "unchecked"."""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import onnx
import pytest
from aiohttp import web
from lifecycle_helpers import (
    AUTH,
    DEFECTS,
    FUSION,
    cache_import,
    defects_onnx,
    first_sync_done,
    fusion_model,
    golden_folder,
    models,
    pack,
    publish,
    write_manifest,
)
from support import TINY_MODEL


def defects_settings(make, registry=None):
    extra = {"models": [{"name": "defects", "bundled": "defects"}]}
    if registry is not None:
        extra["lifecycle.insecure_registries"] = [registry.host]
    return make(**extra)


async def sync(client) -> str:
    resp = await client.post("/v1/admin/sync", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    return next(iter(body["report"].values()))


async def test_a_packed_detector_pushed_with_oras_passes_its_gate_and_is_served(
    lifecycle, registry, client_factory, tmp_path
):
    sidecar = pack(defects_onnx(tmp_path / "d.onnx", "1.1.0"), golden_folder(tmp_path / "g"),
                   tmp_path / "v110", "defects", "1.1.0")
    ref = registry.push(tmp_path / "v110", "models/defects:1.1.0",
                        ("model.onnx", "model.json", "golden.tar"))
    manifest, make = lifecycle
    write_manifest(manifest, ref, model="defects", min_score=0.5, max_drop=0.02)
    client = await client_factory(defects_settings(make, registry))
    report = await sync(client)
    # (the start-up sync, waiting for the first, may have run this one already)
    assert report.split(" (")[0] in ("swapped to 1.1.0", "running 1.1.0"), report
    defects = (await models(client))["defects"]
    assert (defects["version"], defects["source"]) == ("1.1.0", ref)
    assert defects["golden"] == {"metric": "map50", "sha256": sidecar["golden"]["sha256"],
                                 "packed_score": sidecar["golden"]["score"]}
    # What the node measured is what pack measured: the same pipeline (here to the last bit;
    # the margin is for another machine's thread count).
    assert defects["validation"]["score"] == pytest.approx(sidecar["golden"]["score"], abs=1e-6)
    assert defects["gate"].startswith("passed: map50"), defects["gate"]
    frame = (DEFECTS.golden_path / "000.jpg").read_bytes()
    resp = await client.post("/v1/models/defects/detect", data=frame,
                             headers={"Content-Type": "image/jpeg"})
    assert resp.status == 200
    assert (await resp.json())["version"] == "1.1.0"
    # An artifact whose sidecar names a golden set it does not carry is refused.
    partial = registry.push(tmp_path / "v110", "models/defects:1.1.0-partial")
    write_manifest(manifest, partial, model="defects", min_score=0.5, max_drop=0.02)
    report = await sync(client)
    assert report.startswith("refused"), report
    assert "the artifact has no 'golden.tar' layer" in report, report


async def test_degraded_detectors_are_refused_by_min_score_and_by_max_drop(
    lifecycle, registry, client_factory, tmp_path
):
    # Two classes swapped in the golden labels: the version scores low on its own set.
    pack(defects_onnx(tmp_path / "a.onnx", "1.2.0"),
         golden_folder(tmp_path / "ga", swap_labels=(1, 2)), tmp_path / "v120", "defects", "1.2.0")
    # The same two classes swapped in the weights, the labels right: it falls behind 1.0.0.
    pack(defects_onnx(tmp_path / "b.onnx", "1.3.0", swap_classes=(1, 2)),
         golden_folder(tmp_path / "gb"), tmp_path / "v130", "defects", "1.3.0")
    files = ("model.onnx", "model.json", "golden.tar")
    low = registry.push(tmp_path / "v120", "models/defects:1.2.0", files)
    behind = registry.push(tmp_path / "v130", "models/defects:1.3.0", files)
    manifest, make = lifecycle
    client = await client_factory(defects_settings(make, registry))
    await first_sync_done(client)
    write_manifest(manifest, low, model="defects", min_score=0.8, max_drop=1.0)
    report = await sync(client)
    assert report.startswith("refused"), report
    assert "min_score 0.8" in report, report

    write_manifest(manifest, behind, model="defects", min_score=0.0, max_drop=0.02)
    report = await sync(client)
    assert report.startswith("refused"), report
    assert "under the running version" in report, report
    assert "min_score" not in report
    defects = (await models(client))["defects"]
    assert (defects["version"], defects["state"]) == ("1.0.0", "ready")


async def test_a_file_share_carries_the_golden_set_beside_the_model_and_a_corrupt_one_is_refused(
    lifecycle, client_factory, tmp_path
):
    onnx.save(fusion_model("1.0.1"), str(tmp_path / "f101.onnx"))
    sidecar = pack(tmp_path / "f101.onnx", FUSION.golden_path, tmp_path / "v101", "fusion",
                   "1.0.1")
    # 1.0.2 packs a set of its own (a set already cached would not be fetched again), which
    # is then changed on the share after packing.
    with np.load(FUSION.golden_path) as data:
        arrays = {k: data[k][:120] for k in data.files}
    np.savez(tmp_path / "g102.npz", **arrays)
    onnx.save(fusion_model("1.0.2"), str(tmp_path / "f102.onnx"))
    pack(tmp_path / "f102.onnx", tmp_path / "g102.npz", tmp_path / "v102", "fusion", "1.0.2")
    arrays["label"][:10] = 0
    np.savez(tmp_path / "v102" / "golden.npz", **arrays)
    manifest, make = lifecycle
    settings = make()
    client = await client_factory(settings)
    await first_sync_done(client)
    write_manifest(manifest, (tmp_path / "v101" / "model.json").as_uri())
    report = await sync(client)
    assert report.startswith("swapped to 1.0.1"), report
    fusion = (await models(client))["fusion"]
    assert fusion["golden"]["sha256"] == sidecar["golden"]["sha256"]
    assert fusion["validation"]["score"] == sidecar["golden"]["score"]
    blobs = {p.name for p in (settings.state_dir / "models" / "blobs" / "sha256").iterdir()}
    assert {sidecar["sha256"], sidecar["golden"]["sha256"]} <= blobs
    state = json.loads((settings.state_dir / "models" / "state.json").read_text())
    assert state["models"]["fusion"][0]["sidecar"]["golden"] == sidecar["golden"]

    write_manifest(manifest, (tmp_path / "v102" / "model.json").as_uri())
    report = await sync(client)
    assert report.startswith("refused"), report
    assert "golden set golden.npz" in report, report
    assert "expected " + json.loads((tmp_path / "v102" / "model.json").read_text())[
        "golden"]["sha256"] in report
    assert (await models(client))["fusion"]["version"] == "1.0.1"


async def test_no_golden_set_is_refused_under_require_golden_and_else_served_unchecked(
    lifecycle, client_factory, tmp_path, caplog
):
    # A model configured by path has no golden set of its own to fall back on.
    manifest, make = lifecycle
    plain = publish(tmp_path / "plain", fusion_model("1.0.1"), "1.0.1")
    client = await client_factory(make(models=[
        {"name": "fusion", "path": str(FUSION.model_path), "kind": "tensor"}]))
    await first_sync_done(client)
    assert (await models(client))["fusion"]["gate"] == "unchecked: no golden set"

    write_manifest(manifest, plain, require_golden=True)
    report = await sync(client)
    assert report.startswith("refused"), report
    assert "has no golden set and require_golden is set" in report
    assert (await models(client))["fusion"]["version"] != "1.0.1"

    write_manifest(manifest, plain)
    with caplog.at_level(logging.WARNING, logger="agent.models.swap"):
        report = await sync(client)
    assert report.startswith("swapped to 1.0.1"), report
    assert "gate unchecked: no golden set" in report
    warnings = [r for r in caplog.records if "gate unchecked" in r.getMessage()]
    assert len(warnings) == 1
    fusion = (await models(client))["fusion"]
    assert (fusion["version"], fusion["gate"]) == ("1.0.1", "unchecked: no golden set")
    assert "validation" not in fusion
    assert "golden" not in fusion


async def test_an_https_source_fetches_the_golden_set_beside_the_sidecar(
    lifecycle, client_factory, tmp_path, aiohttp_server
):
    onnx.save(fusion_model("1.0.1"), str(tmp_path / "f.onnx"))
    sidecar = pack(tmp_path / "f.onnx", FUSION.golden_path, tmp_path / "v101", "fusion", "1.0.1")
    served: list[str] = []

    async def share(request: web.Request) -> web.FileResponse:
        served.append(request.match_info["name"])
        return web.FileResponse(tmp_path / "v101" / request.match_info["name"])

    app = web.Application()
    app.router.add_get("/fusion/1.0.1/{name}", share)
    server = await aiohttp_server(app)
    manifest, make = lifecycle
    write_manifest(manifest, FUSION.folder.joinpath("model.json").as_uri())
    client = await client_factory(make())
    await first_sync_done(client)  # else it, not the test's sync, might fetch the version
    write_manifest(manifest, str(server.make_url("/fusion/1.0.1/model.json")))
    report = await sync(client)
    assert report.startswith("swapped to 1.0.1"), report
    assert sorted(set(served)) == ["golden.npz", "model.json", "model.onnx"]
    fusion = (await models(client))["fusion"]
    assert fusion["golden"]["sha256"] == sidecar["golden"]["sha256"]
    assert fusion["validation"]["score"] == sidecar["golden"]["score"]


async def test_a_restart_from_the_cache_and_an_imported_version_keep_their_golden_set(
    lifecycle, client_factory, tmp_path
):
    """``cache import`` of a packed directory stores its golden set too; the node starts on
    it with no network and scores it on that set."""
    with np.load(FUSION.golden_path) as data:  # a set of its own, not the bundled one
        np.savez(tmp_path / "g.npz", **{k: data[k][::2] for k in data.files})
    onnx.save(fusion_model("1.0.1"), str(tmp_path / "f.onnx"))
    sidecar = pack(tmp_path / "f.onnx", tmp_path / "g.npz", tmp_path / "v101", "fusion", "1.0.1")
    manifest, make = lifecycle
    settings = make()
    cache_import(tmp_path / "v101" / "model.json", settings.state_dir)
    blobs = settings.state_dir / "models" / "blobs" / "sha256"
    assert (blobs / sidecar["golden"]["sha256"]).is_file()
    write_manifest(manifest, (tmp_path / "nowhere" / "model.json").as_uri())  # unreachable
    client = await client_factory(settings)
    for _ in range(500):
        fusion = (await models(client))["fusion"]
        if "validation" in fusion:
            break
        await asyncio.sleep(0.02)
    assert (fusion["version"], fusion["source"]) == ("1.0.1", "file://" + str(
        tmp_path / "v101" / "model.json"))
    assert fusion["golden"]["sha256"] == sidecar["golden"]["sha256"]
    assert fusion["validation"]["score"] == sidecar["golden"]["score"] != FUSION.golden_score


async def test_max_drop_is_reported_unchecked_when_the_running_version_cannot_score_the_set(
    lifecycle, client_factory, tmp_path
):
    """The running detector has 3 classes, the candidate's golden set labels a 4th."""
    sidecar = pack(defects_onnx(tmp_path / "d.onnx", "2.0.0"), golden_folder(tmp_path / "g"),
                   tmp_path / "v200", "parts", "2.0.0")
    manifest, make = lifecycle
    client = await client_factory(make(models=[{"name": "parts", "path": str(TINY_MODEL)}]))
    await first_sync_done(client)
    write_manifest(manifest, (tmp_path / "v200" / "model.json").as_uri(), model="parts",
                   min_score=0.5, max_drop=0.0)
    report = await sync(client)
    assert report.startswith("swapped to 2.0.0"), report
    parts = (await models(client))["parts"]
    assert parts["validation"]["score"] == pytest.approx(sidecar["golden"]["score"], abs=1e-6)
    assert parts["gate"].startswith("passed: map50 "), parts["gate"]
    assert "max_drop unchecked: the running version cannot be scored on it: golden set " \
        "golden.tar: labels/" in parts["gate"], parts["gate"]
    assert "has class 3, but the model has 3 classes" in parts["gate"], parts["gate"]
