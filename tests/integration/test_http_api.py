"""The HTTP contract of the detect endpoint and its input limits, on a real localhost port."""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib

import aiohttp
import pytest
from support import TINY_MODEL, image_bytes

JPEG = {"Content-Type": "image/jpeg"}


async def test_detect_answer_has_the_contract_shape(client):
    resp = await client.post(
        "/v1/models/tiny/detect", data=image_bytes("coffee-600x400.jpg"), headers=JPEG
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["model"] == "tiny"
    assert len(body["version"]) == 12
    assert body["image"] == {"width": 600, "height": 400}
    assert set(body["timing_ms"]) == {"queue", "preprocess", "inference", "postprocess", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0
    assert body["detections"], "the tiny model finds boxes on this image at conf 0.25"
    det = body["detections"][0]
    assert set(det) == {"class_id", "label", "score", "box"}
    assert det["label"] == ["scratch", "dent", "hole"][det["class_id"]]
    x1, y1, x2, y2 = det["box"]
    assert 0 <= x1 <= x2 <= 600
    assert 0 <= y1 <= y2 <= 400


async def test_query_thresholds_change_the_answer(client):
    data = image_bytes("camera-gray.png")
    url = "/v1/models/tiny/detect"
    png = {"Content-Type": "image/png"}
    default = await (await client.post(url, data=data, headers=png)).json()
    strict = await (await client.post(url + "?conf=0.5&max_det=2", data=data, headers=png)).json()
    assert len(strict["detections"]) <= 2
    assert all(d["score"] > 0.5 for d in strict["detections"])
    assert len(default["detections"]) > len(strict["detections"])


async def test_multipart_upload(client):
    form = aiohttp.FormData()
    form.add_field("note", "camera 7")
    form.add_field(
        "file", image_bytes("chelsea-rgba.png"), filename="f.png", content_type="image/png"
    )
    resp = await client.post("/v1/models/tiny/detect", data=form)
    assert resp.status == 200
    assert (await resp.json())["image"] == {"width": 451, "height": 300}


async def test_octet_stream_is_sniffed(client):
    resp = await client.post(
        "/v1/models/tiny/detect",
        data=image_bytes("coffee-600x400.jpg"),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert resp.status == 200


def _png_bomb(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", 13)
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + b"\x00" * 64
    )


@pytest.mark.parametrize(
    ("path", "body", "ctype", "status", "needle"),
    [
        ("/v1/models/nope/detect", b"x", "image/jpeg", 404, "no model named"),
        ("/v1/models/tiny/detect", b"x", "text/plain", 415, "Content-Type"),
        ("/v1/models/tiny/detect", b"GIF89a\x01\x00\x01\x00", "image/gif", 415, "Content-Type"),
        (
            "/v1/models/tiny/detect",
            b"GIF89a\x01\x00\x01\x00",
            "application/octet-stream",
            415,
            "gif",
        ),
        ("/v1/models/tiny/detect", b"garbage bytes", "image/jpeg", 400, "not a JPEG or PNG"),
        ("/v1/models/tiny/detect", b"", "image/jpeg", 400, "empty body"),
        ("/v1/models/tiny/detect", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image/jpeg", 400, "JPEG"),
        ("/v1/models/tiny/detect", _png_bomb(60_000, 60_000), "image/png", 413, "pixels"),
        ("/v1/models/tiny/detect?conf=abc", b"x", "image/jpeg", 400, "conf"),
        ("/v1/models/tiny/detect?conf=2", b"x", "image/jpeg", 400, "conf"),
        ("/v1/models/tiny/detect?max_det=1.5", b"x", "image/jpeg", 400, "max_det"),
    ],
)
async def test_bad_requests_get_json_4xx(client, path, body, ctype, status, needle):
    if "?" in path and body == b"x":
        body = image_bytes("coffee-600x400.jpg")
    resp = await client.post(path, data=body, headers={"Content-Type": ctype})
    assert resp.status == status
    payload = await resp.json()
    assert needle in payload["error"] or needle in str(payload["detail"])


async def test_curl_without_a_content_type_is_told_the_header_to_add(client):
    """``curl --data-binary @frame.jpg URL`` sends application/x-www-form-urlencoded."""
    resp = await client.post(
        "/v1/models/tiny/detect",
        data=image_bytes("coffee-600x400.jpg"),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert resp.status == 415
    payload = await resp.json()
    assert "-H 'Content-Type: image/jpeg'" in payload["error"]
    assert "application/x-www-form-urlencoded" in payload["error"]
    assert set(payload["detail"]["accepted"]) >= {"image/jpeg", "image/png", "multipart/form-data"}


async def test_body_over_the_limit_is_413_by_content_length(client_factory, settings_factory):
    client = await client_factory(settings_factory(**{"limits.max_body_bytes": 10_000}))
    resp = await client.post("/v1/models/tiny/detect", data=b"\xff" * 10_001, headers=JPEG)
    assert resp.status == 413
    assert (await resp.json())["detail"] == {"max_bytes": 10_000}


async def test_chunked_body_over_the_limit_stops_at_the_limit(client_factory, settings_factory):
    client = await client_factory(settings_factory(**{"limits.max_body_bytes": 100_000}))
    sent = 0

    async def endless():
        nonlocal sent
        for _ in range(10_000):  # 640 MB if nobody stopped reading
            sent += 65536
            yield b"\xff" * 65536

    try:
        resp = await client.post("/v1/models/tiny/detect", data=endless(), headers=JPEG)
        assert resp.status == 413
    except aiohttp.ClientError:
        pass  # the server may close the connection mid-upload: also a refusal
    assert sent < 50 * 1024 * 1024


async def test_multipart_without_a_file_is_400(client):
    with aiohttp.MultipartWriter("form-data") as form:
        form.append("no file here").set_content_disposition("form-data", name="note")
    resp = await client.post("/v1/models/tiny/detect", data=form)
    assert resp.status == 400
    assert "no file part" in (await resp.json())["error"]


async def test_bad_deadline_header_is_400(client):
    resp = await client.post(
        "/v1/models/tiny/detect",
        data=image_bytes("coffee-600x400.jpg"),
        headers={**JPEG, "X-Deadline-Ms": "soon"},
    )
    assert resp.status == 400


async def test_unknown_route_and_method_are_json(client):
    resp = await client.get("/v1/nothing")
    assert resp.status == 404
    assert "error" in await resp.json()
    resp = await client.get("/v1/models/tiny/detect")
    assert resp.status == 405
    assert "error" in await resp.json()


async def test_models_listing_and_v2_health(client):
    body = await (await client.get("/v1/models")).json()
    (model,) = body["models"]
    assert model["name"] == "tiny"
    assert model["state"] == "ready"
    assert model["provider"] == "cpu"
    assert model["source"] == "file"
    assert model["digest"].startswith("sha256:")
    assert model["input"] == {"height": 320, "width": 416, "batch": "dynamic"}
    assert (await client.get("/v2/health/live")).status == 200
    assert (await client.get("/v2/health/ready")).status == 200
    assert (await client.get("/livez")).status == 200


async def test_expired_deadline_is_504(client_factory, settings_factory):
    client = await client_factory(settings_factory(**{"batching.max_batch": 1}))
    data = image_bytes("astronaut-1080p.jpg")
    busy = [client.post("/v1/models/tiny/detect", data=data, headers=JPEG) for _ in range(6)]
    late = client.post("/v1/models/tiny/detect", data=data, headers={**JPEG, "X-Deadline-Ms": "1"})
    responses = await asyncio.gather(*busy, late)
    assert [r.status for r in responses[:-1]] == [200] * 6
    assert responses[-1].status == 504
    assert "deadline" in (await responses[-1].json())["error"]


async def test_a_model_that_fails_to_load_keeps_the_daemon_up(
    aiohttp_client, settings_factory, tmp_path
):
    from agent.http.app import create_app

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    settings = settings_factory(models=[{"name": "tiny", "path": str(junk)}])
    client = await aiohttp_client(create_app(settings))
    for _ in range(200):
        body = await (await client.get("/v1/models")).json()
        if body["models"][0]["state"] == "failed":
            break
        await asyncio.sleep(0.01)
    assert body["models"][0]["state"] == "failed"
    health = await client.get("/health")
    assert health.status == 503
    assert "onnxruntime cannot load" in (await health.json())["errors"]["tiny"]
    resp = await client.post(
        "/v1/models/tiny/detect", data=image_bytes("coffee-600x400.jpg"), headers=JPEG
    )
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"


def _model_failing_at_run_time(path):
    """A graph with a detector's interface whose Reshape can only fail when it runs."""
    from onnx import TensorProto, helper, save

    shape = helper.make_tensor("shape", TensorProto.INT64, [3], [1, 7, -1])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["images", "shape"], ["output0"])],
        "broken",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", 3, "h", "w"])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["b", 7, "n"])],
        initializer=[shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime we support, new onnx writes newer
    helper.set_model_props(model, {"imgsz": "[32, 32]"})
    save(model, path)


async def test_a_model_that_fails_its_warm_up_is_failed_not_fatal(
    aiohttp_client, settings_factory, tmp_path
):
    from agent.http.app import create_app

    broken = tmp_path / "broken.onnx"
    _model_failing_at_run_time(broken)
    settings = settings_factory(
        models=[
            {"name": "broken", "path": str(broken)},
            {"name": "tiny", "path": str(TINY_MODEL)},
        ]
    )
    client = await aiohttp_client(create_app(settings))
    for _ in range(500):
        models = {m["name"]: m for m in (await (await client.get("/v1/models")).json())["models"]}
        if models["tiny"]["state"] == "ready":
            break
        await asyncio.sleep(0.01)
    assert models["broken"]["state"] == "failed"
    assert models["broken"]["error"].startswith("warm-up failed")
    assert models["tiny"]["state"] == "ready"  # one bad model does not take the others down
    assert (await client.get("/health")).status == 503
    resp = await client.post(
        "/v1/models/tiny/detect", data=image_bytes("coffee-600x400.jpg"), headers=JPEG
    )
    assert resp.status == 200


NASTY = [
    "nan",
    "inf",
    "-inf",
    "1e309",
    "-1",
    "0x10",
    "",
    " ",
    "1,5",
    "%00",
    "1e3",
    "9" * 400,
    "0.5\n",
    "true",
]


@pytest.mark.parametrize("value", NASTY)
async def test_nasty_parameters_are_4xx_or_served_never_5xx(client, value):
    data = image_bytes("coffee-600x400.jpg")
    for query in ("conf", "iou", "max_det"):
        resp = await client.post(f"/v1/models/tiny/detect?{query}={value}", data=data, headers=JPEG)
        assert resp.status in (200, 400), (query, value, resp.status)
        assert "error" in await resp.json() or resp.status == 200
    resp = await client.post(
        "/v1/models/tiny/detect", data=data, headers={**JPEG, "X-Deadline-Ms": value.strip() or "x"}
    )
    assert resp.status in (200, 400, 504)


async def test_request_lines_are_off_by_default_and_carry_no_frame_bytes(
    client_factory, settings_factory, caplog
):
    caplog.set_level(logging.INFO, logger="agent")
    quiet = await client_factory(settings_factory())
    data = image_bytes("coffee-600x400.jpg")
    await quiet.post("/v1/models/tiny/detect", data=data, headers={**JPEG, "X-Camera-Id": "c1"})
    assert not [r for r in caplog.records if r.getMessage() == "detect"]
    chatty = await client_factory(settings_factory(log_requests=True))
    await chatty.post(
        "/v1/models/tiny/detect", data=data, headers={**JPEG, "X-Camera-Id": "line-7\tcam"}
    )
    (line,) = [r for r in caplog.records if r.getMessage() == "detect"]
    assert line.camera == "line-7cam"  # control characters dropped
    assert line.model == "tiny"
    assert all(len(str(v)) < 200 for v in vars(line).values())


async def test_multipart_file_part_over_the_limit_is_413(client_factory, settings_factory):
    client = await client_factory(settings_factory(**{"limits.max_body_bytes": 100_000}))
    body = (
        b"--edgeboundary\r\n"
        b'Content-Disposition: form-data; name="file"; filename="f.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n"
        + image_bytes("astronaut-1080p.jpg")  # 362 KB
        + b"\r\n--edgeboundary--\r\n"
    )

    async def chunked():  # no Content-Length: the part reader itself must stop at the limit
        for i in range(0, len(body), 32768):
            yield body[i : i + 32768]

    resp = await client.post(
        "/v1/models/tiny/detect",
        data=chunked(),
        headers={"Content-Type": "multipart/form-data; boundary=edgeboundary"},
    )
    assert resp.status == 413
    assert "file part is larger than the limit" in (await resp.json())["error"]
