"""The daemon with ``runtime.providers: [openvino, cpu]``: the bundled models served by the
OpenVINO runtime at fp32, reported as such, with ONNX Runtime's golden-set scores through HTTP."""

from __future__ import annotations

import aiohttp
import numpy as np
from support import Daemon, require

from inference.bundled import BUNDLE_ROOT, read_bundle
from inference.evaluation import ScoredBox
from inference.golden import load_detection_golden, score_detections
from inference.openvino_engine import openvino_available

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
