"""/metrics/summary and /metrics on a real port, after real requests of every outcome."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families
from support import image_bytes, promtool_check

from inference.bundled import BUNDLE_ROOT, read_bundle

JPEG = {"Content-Type": "image/jpeg"}
FUSION = read_bundle(BUNDLE_ROOT / "fusion")


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(got: dict, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


async def test_requests_of_every_outcome_are_counted_and_both_texts_are_promtool_clean(
    client_factory, settings_factory
):
    client = await client_factory(
        settings_factory(models=[
            {"name": "tiny", "path": str(BUNDLE_ROOT.parents[1] / "tests/fixtures/models"
                                         / "yolov8t-3cls-dynbatch-320x416.onnx")},
            {"name": "fusion", "bundled": "fusion"},
        ])
    )
    frame = image_bytes("coffee-600x400.jpg")
    for i in range(6):
        resp = await client.post("/v1/models/tiny/detect", data=frame,
                                 headers={**JPEG, "X-Camera-Id": f"dock-{i % 2}"})
        assert resp.status == 200
    assert (await client.post("/v1/models/tiny/detect", data=b"nope", headers=JPEG)).status == 400
    assert (await client.post("/v1/models/tiny/detect", data=frame,
                              headers={"Content-Type": "image/gif"})).status == 415
    assert (await client.post("/v1/models/ghost/detect", data=frame, headers=JPEG)).status == 404
    sample = (FUSION.folder / "sample-request.json").read_bytes()
    assert (await client.post("/v2/models/fusion/infer", data=sample)).status == 200

    summary = await client.get("/metrics/summary")
    assert summary.status == 200
    assert summary.headers["Content-Type"].startswith("text/plain; version=")
    text = await summary.text()
    assert len(text.encode()) <= 4096
    got = parse(text)
    # The summary: status classes and the queue_full reason only (bounded); /metrics: exact.
    assert value(got, "edge_requests_total", model="tiny", code="2xx") == 6
    assert value(got, "edge_requests_total", model="tiny", code="4xx") == 2
    assert not any(name == "edge_requests_rejected_total" for name, _ in got)
    assert value(got, "edge_inference_latency_seconds_count", model="tiny") == 6
    assert value(got, "edge_inference_latency_seconds_count", model="fusion") == 1
    p50 = value(got, "edge_inference_latency_seconds", model="tiny", quantile="0.5")
    assert 0 < p50 < 5
    assert value(got, "edge_queue_depth_max", model="tiny") >= 1
    assert value(got, "edge_ready") == 1
    assert not any(dict(labels).get("model") == "ghost" for _, labels in got)

    full = await (await client.get("/metrics")).text()
    detail = parse(full)
    assert value(detail, "edge_requests_total", model="tiny", code="200") == 6
    assert value(detail, "edge_requests_total", model="tiny", code="400") == 1
    assert value(detail, "edge_requests_total", model="tiny", code="415") == 1
    assert value(detail, "edge_requests_rejected_total", model="tiny", reason="bad_image") == 1
    assert value(detail, "edge_requests_rejected_total", model="tiny",
                 reason="unsupported_media_type") == 1
    assert value(detail, "edge_request_duration_seconds_count", model="tiny") == 6
    assert value(detail, "edge_camera_frames_total", model="tiny", camera="dock-1") == 3
    assert value(detail, "edge_stage_latency_seconds_count", model="tiny", stage="inference") == 6
    for body in (text, full):
        result = promtool_check(body.encode())
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout == b""
        assert result.stderr == b""


async def test_queue_full_sheds_are_counted_by_reason(client_factory, settings_factory):
    client = await client_factory(settings_factory(**{"batching.max_queue": 1}))
    frame = image_bytes("astronaut-1080p.jpg")
    statuses = await asyncio.gather(*(
        client.post("/v1/models/tiny/detect", data=frame, headers=JPEG) for _ in range(10)
    ))
    shed = sum(r.status == 503 for r in statuses)
    assert shed > 0
    got = parse(await (await client.get("/metrics/summary")).text())
    assert value(got, "edge_requests_rejected_total", model="tiny", reason="queue_full") == shed
    assert value(got, "edge_requests_total", model="tiny", code="5xx") == shed
    assert value(got, "edge_queue_depth_max", model="tiny") == 1


async def test_bundled_model_is_scored_on_its_golden_set_on_the_node(
    client_factory, settings_factory
):
    settings = settings_factory(models=[{"name": "fusion", "bundled": "fusion"}])
    client = await client_factory(settings)
    for _ in range(300):
        got = parse(await (await client.get("/metrics/summary")).text())
        key = ("edge_model_validation_score",
               frozenset({"model": "fusion", "version": "1.0.0"}.items()))
        if key in got:
            break
        await asyncio.sleep(0.05)
    assert got[key] == FUSION.golden_score  # the same number the training recorded
    # The self-test is not camera traffic: it is not in the request counters.
    assert ("edge_requests_total", frozenset({"model": "fusion", "code": "2xx"}.items())) \
        not in got
