"""The daemon with ``runtime.providers: [openvino, cpu]``: the bundled models served by the
OpenVINO runtime at fp32, reported as such, with ONNX Runtime's golden-set scores through HTTP."""

from __future__ import annotations

import aiohttp
import numpy as np
import pytest
from lifecycle_helpers import assert_follows_the_rule
from support import Daemon, require

from inference.bundled import BUNDLE_ROOT, read_bundle
from inference.evaluation import ScoredBox
from inference.golden import load_detection_golden, score_detections
from inference.openvino_engine import openvino_available

# slow: OpenVINO compiles per daemon, about half a minute (once per CI run, not on 3.10)
pytestmark = pytest.mark.slow

DEFECTS = read_bundle(BUNDLE_ROOT / "defects")


async def test_bundled_models_served_on_openvino(tmp_path):
    require(openvino_available(), "the OpenVINO runtime (pip install '.[openvino]')")
    daemon = Daemon(["--state-dir", str(tmp_path / "state")],
                    env={"EDGE_AGENT_RUNTIME__PROVIDERS": "openvino,cpu"})
    try:
        await daemon.wait_ready(timeout=120)
        async with aiohttp.ClientSession() as http:
            async with http.get(daemon.url + "/v1/models") as resp:
                models = {m["name"]: m for m in (await resp.json())["models"]}
            assert {name: m["provider"] for name, m in models.items()} == {
                "defects": "openvino", "fusion": "openvino"}
            scoring = DEFECTS.sidecar["golden"]["scoring"]
            url = (f"{daemon.url}/v1/models/defects/detect"
                   f"?conf={scoring['conf']}&iou={scoring['iou']}")
            frames = load_detection_golden(DEFECTS.golden_path)
            answers: dict[bytes, list[ScoredBox]] = {}
            for f in frames:
                async with http.post(url, data=f.data,
                                     headers={"Content-Type": "image/jpeg"}) as r:
                    assert r.status == 200, await r.text()
                    answers[f.data] = [ScoredBox(d["class_id"], d["score"], tuple(d["box"]))
                                       for d in (await r.json())["detections"]]
            request = (BUNDLE_ROOT / "fusion" / "sample-request.json").read_bytes()
            async with http.post(daemon.url + "/v2/models/fusion/infer", data=request,
                                 headers={"Content-Type": "application/json"}) as r:
                assert r.status == 200, await r.text()
                outputs = {o["name"]: o["data"] for o in (await r.json())["outputs"]}
    finally:
        daemon.stop()
    # fp32: the score ONNX Runtime's CPU path gives (the sidecar's), to rounding.
    score = score_detections(frames, answers.__getitem__)
    assert abs(score.map - DEFECTS.golden_score) < 1e-3, (score.map, DEFECTS.golden_score)
    # The README's fusion example: a worn bearing (class 3).
    assert int(np.argmax(outputs["state_probs"])) == 3


async def detect_ok(client) -> dict:
    frame = (DEFECTS.golden_path / "001.jpg").read_bytes()
    resp = await client.post("/v1/models/defects/detect", data=frame,
                             headers={"Content-Type": "image/jpeg"})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_openvino_paths_join_the_precision_gate_where_enabled(
    settings_factory, client_factory
):
    """``runtime.openvino``: the bundled detector (it has a golden set, no variant file) is
    measured on ONNX Runtime at fp32, OpenVINO at fp32 and, where this CPU computes bf16,
    OpenVINO at bf16; the fastest within max_drop serves, and says so."""
    require(openvino_available(), "the OpenVINO runtime (pip install '.[openvino]')")
    from inference.openvino_engine import cpu_has_bf16

    settings = settings_factory(models=[{"name": "defects", "bundled": "defects"}],
                                **{"runtime.openvino": True})
    client = await client_factory(settings)
    defects = {m["name"]: m for m in (await (await client.get("/v1/models")).json())["models"]}[
        "defects"]
    choice = defects["precision_choice"]
    print(f"precision choice: {choice}")
    expected = {"fp32", "fp32-openvino"} | ({"bf16"} if cpu_has_bf16() else set())
    assert set(choice["variants"]) == expected
    for name, v in choice["variants"].items():
        assert "error" not in v, (name, v)
        assert v["median_ms"] > 0
    # OpenVINO at fp32 scores what ONNX Runtime does, to rounding.
    assert abs(choice["variants"]["fp32-openvino"]["score"]
               - choice["variants"]["fp32"]["score"]) < 1e-3, choice
    assert_follows_the_rule(choice, 0.01)
    assert defects["precision"] == choice["serving"]
    assert defects["provider"] == ("openvino" if choice["serving"] != "fp32" else "cpu")
    text = await (await client.get("/metrics/summary")).text()
    assert f'precision="{choice["serving"]}"' in text
    assert (await detect_ok(client))["detections"]


async def test_a_cpu_without_bf16_never_measures_or_serves_it_even_pinned(
    settings_factory, client_factory, monkeypatch
):
    """This machine's CPU may well have bf16: the probe is patched to a CPU without it (the
    real probe is unit-tested against OpenVINO and /proc/cpuinfo)."""
    require(openvino_available(), "the OpenVINO runtime (pip install '.[openvino]')")
    import inference.openvino_engine as engine

    monkeypatch.setattr(engine, "cpu_has_bf16", lambda: False)
    auto = await client_factory(settings_factory(
        models=[{"name": "defects", "bundled": "defects"}], **{"runtime.openvino": True}))
    models = (await (await auto.get("/v1/models")).json())["models"]
    choice = models[0]["precision_choice"]
    assert set(choice["variants"]) == {"fp32", "fp32-openvino"}
    assert choice["serving"] != "bf16"
    pinned = await client_factory(settings_factory(
        models=[{"name": "defects", "bundled": "defects", "precision": "bf16"}],
        **{"runtime.openvino": True}))
    defects = (await (await pinned.get("/v1/models")).json())["models"][0]
    assert defects["precision"] == "fp32"
    assert "pinned bf16, but this node cannot run it" in defects["precision_choice"]["reason"]
    assert (await detect_ok(pinned))["detections"]


async def test_a_pinned_bf16_serves_where_the_cpu_has_it_within_max_drop(
    settings_factory, client_factory
):
    require(openvino_available(), "the OpenVINO runtime (pip install '.[openvino]')")
    from inference.openvino_engine import cpu_has_bf16

    client = await client_factory(settings_factory(
        models=[{"name": "defects", "bundled": "defects", "precision": "bf16"}],
        **{"runtime.openvino": True}))
    defects = (await (await client.get("/v1/models")).json())["models"][0]
    choice = defects["precision_choice"]
    if not cpu_has_bf16():  # the CI machine's CPU decides which half of the rule is checked
        assert defects["precision"] == "fp32"
        assert "cannot run it" in choice["reason"]
        return
    assert {"fp32", "bf16"} <= set(choice["variants"])
    drop = choice["variants"]["fp32"]["score"] - choice["variants"]["bf16"]["score"]
    assert drop <= 0.01, choice
    assert defects["precision"] == "bf16"
    assert choice["reason"].startswith("bf16: pinned"), choice
    assert (await detect_ok(client))["version"] == defects["version"]
