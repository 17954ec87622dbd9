"""Access control and secrets: only the admin token changes what is served, names cannot reach
outside the cache, and no frame byte, token or credential reaches the log."""

from __future__ import annotations

import asyncio
import hmac
import json

import aiohttp
import cv2
import numpy as np
from aiohttp import web
from lifecycle_helpers import AUTH, TOKEN, write_manifest
from support import TINY_MODEL, Daemon, free_port

from agent.http import admin


async def test_only_the_exact_bearer_token_is_accepted(lifecycle, versions, client_factory):
    manifest, make = lifecycle
    write_manifest(manifest, versions["bundled"])
    client = await client_factory(make())
    refused = [
        {},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Bearer x{TOKEN}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Token {TOKEN}"},
        {"X-Token": TOKEN},
    ]
    for headers in refused:
        resp = await client.post("/v1/admin/sync", headers=headers)
        assert resp.status == 401, headers
        assert TOKEN not in await resp.text()
    assert (await client.post(f"/v1/admin/sync?token={TOKEN}")).status == 401
    assert (await client.get("/v1/admin/sync", headers=AUTH)).status == 405
    ok = await client.post("/v1/admin/sync", headers={"Authorization": f"bearer  {TOKEN} "})
    assert ok.status == 200


async def test_the_token_is_compared_in_constant_time(lifecycle, versions, client_factory,
                                                      monkeypatch):
    """No ``==`` on the secret: every check goes through hmac.compare_digest."""
    manifest, make = lifecycle
    write_manifest(manifest, versions["bundled"])
    client = await client_factory(make())
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(admin.hmac, "compare_digest", recording)
    await client.post("/v1/admin/sync", headers={"Authorization": "Bearer guess"})
    await client.post("/v1/admin/sync", headers=AUTH)
    assert seen == [(b"guess", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


async def test_model_names_in_paths_cannot_climb_anywhere(client):
    for path in (
        "/v1/models/..%2F..%2Fetc%2Fpasswd/detect",
        "/v1/models/%2e%2e/detect",
        "/v2/models/..%2Fstate/infer",
        "/v2/models/tiny/versions/..%2F..%2Fblobs/infer",
    ):
        resp = await client.post(path, data=b"x", headers={"Content-Type": "image/jpeg"})
        assert resp.status == 404, path
        assert "error" in await resp.json()


async def test_a_sidecar_file_outside_its_folder_is_refused(lifecycle, client_factory, tmp_path):
    manifest, make = lifecycle
    share = tmp_path / "share" / "v"
    share.mkdir(parents=True)
    (tmp_path / "share" / "secret.onnx").write_bytes(b"not yours")
    for file in ("../secret.onnx", "..%2Fsecret.onnx", "sub/model.onnx", ".."):
        (share / "model.json").write_text(json.dumps(
            {"name": "fusion", "version": "6.6.6", "file": file, "sha256": "ab" * 32}))
        write_manifest(manifest, (share / "model.json").as_uri())
        client = await client_factory(make())
        report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
        assert "must be a file name beside it" in report["report"]["fusion"], (file, report)
        await client.close()


def frame_with_marker(marker: bytes) -> bytes:
    """A real JPEG whose comment segment carries ``marker``."""
    jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 127, np.uint8))[1].tobytes()
    comment = b"\xff\xfe" + (len(marker) + 2).to_bytes(2, "big") + marker
    return jpeg[:2] + comment + jpeg[2:]


async def test_no_frame_bytes_tokens_or_credentials_in_the_log(tmp_path):
    """Debug logging and request lines on, while: frames and garbage bodies carrying a marker,
    a wrong and a right admin token, a manifest URL with a password in it, and registry
    credentials that a registry asks for. The registry here is a stand-in that only asks for
    Basic auth and records what it gets (the real registry's auth is test_oci_registry.py's):
    it proves the credentials were used, and so could have leaked."""
    secrets = {
        "token": "ADMIN-TOKEN-4f1c2e",
        "wrong": "WRONG-TOKEN-8d2b7a",
        "manifest_pw": "MANIFEST-PW-91ab3c",
        "registry_pw": "REGISTRY-PW-77de01",
        "frame": "FRAME-BYTES-5a5a5a",
    }
    seen_auth: list[str] = []

    async def registry(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization")
        if auth is None:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        seen_auth.append(auth)
        return web.json_response({"errors": [{"code": "MANIFEST_UNKNOWN"}]}, status=404)

    async def fleet(request: web.Request) -> web.Response:
        seen_auth.append(request.headers.get("Authorization", ""))
        if len(seen_auth) == 1:  # the first read fails: the error names the manifest URL
            return web.Response(status=503)
        return web.Response(text=json.dumps({"models": {"fusion": {"stable": {
            "source": f"oci://127.0.0.1:{reg_port}/models/fusion:1.0.1"}}}}))

    reg_port, fleet_port = free_port(), free_port()
    app = web.Application()
    app.router.add_route("*", "/v2/{tail:.*}", registry)
    app.router.add_get("/fleet.yaml", fleet)
    runner = web.AppRunner(app)
    await runner.setup()
    for port in (reg_port, fleet_port):
        await web.TCPSite(runner, "127.0.0.1", port).start()

    (tmp_path / "token").write_text(secrets["token"])
    creds = tmp_path / "registry.json"
    creds.write_text(json.dumps(
        {f"127.0.0.1:{reg_port}": {"username": "puller", "password": secrets["registry_pw"]}}))
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "models": [{"name": "tiny", "path": str(TINY_MODEL)}, {"name": "fusion",
                                                                "bundled": "fusion"}],
        "log_level": "debug",
        "log_requests": True,
        "admin": {"token_file": str(tmp_path / "token")},
        "lifecycle": {
            "manifest": f"http://ops:{secrets['manifest_pw']}@127.0.0.1:{fleet_port}/fleet.yaml",
            "insecure_registries": [f"127.0.0.1:{reg_port}"],
            "registry_credentials": str(creds),
            "retry_attempts": 1,
            "watch_interval_s": 0,
        },
    }))
    d = Daemon(["--config", str(config), "--state-dir", str(tmp_path / "state")])
    try:
        await d.wait_ready()
        marker = secrets["frame"].encode()
        async with aiohttp.ClientSession() as http:
            for body in (frame_with_marker(marker), marker * 50, b"\xff\xd8" + marker):
                async with http.post(d.url + "/v1/models/tiny/detect", data=body,
                                     headers={"Content-Type": "image/jpeg"}) as resp:
                    assert marker not in await resp.read()
            async with http.post(d.url + "/v2/models/fusion/infer", data=marker,
                                 headers={"Inference-Header-Content-Length": "5"}) as resp:
                assert resp.status == 400
            for token, status in ((secrets["wrong"], 401), (secrets["token"], 200)):
                async with http.post(d.url + "/v1/admin/sync",
                                     headers={"Authorization": f"Bearer {token}"}) as resp:
                    assert resp.status == status
        await asyncio.sleep(0.5)
    finally:
        d.signal()
        d.wait()
        await runner.cleanup()
    assert any(a.startswith("Basic ") for a in seen_auth), seen_auth  # credentials were used
    assert "model sync" in d.output, d.output  # the sync did log what it did
    for what, secret in secrets.items():
        assert secret not in d.output, f"{what} leaked into the log"
