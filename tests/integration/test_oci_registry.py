"""Models as OCI artifacts in a real registry (Debian's docker-registry, distribution 2.8),
pushed with ORAS; and a daemon process killed mid-download that restarts with the registry gone.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import onnx
import onnx.numpy_helper
import pytest
from aiohttp import web
from lifecycle_helpers import (
    AUTH,
    FUSION,
    TOKEN,
    fusion_model,
    models,
    publish,
    summary,
    write_manifest,
)
from oci_registry import Registry
from support import Daemon, require


async def test_an_oci_artifact_is_pulled_verified_and_swapped_in(
    lifecycle, registry, client_factory, tmp_path
):
    published = publish(tmp_path / "v101", fusion_model("1.0.1"), "1.0.1")
    ref = registry.push(Path(published.removeprefix("file://")).parent, "models/fusion:1.0.1")
    manifest, make = lifecycle
    write_manifest(manifest, ref)
    client = await client_factory(make(**{"lifecycle.insecure_registries": [registry.host]}))
    for _ in range(200):
        if (await models(client))["fusion"]["version"] == "1.0.1":
            break
        await asyncio.sleep(0.05)
    fusion = (await models(client))["fusion"]
    assert (fusion["version"], fusion["source"]) == ("1.0.1", ref)
    # The registry goes away: the node keeps serving and says it is disconnected.
    registry.stop()
    report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
    assert report["report"]["fusion"].startswith("unreachable"), report
    assert report["connected"] is False
    got = await summary(client)
    assert got[("edge_control_plane_connected", ())] == 0
    sample = (FUSION.folder / "sample-request.json").read_bytes()
    assert (await client.post("/v2/models/fusion/infer", data=sample)).status == 200


async def test_a_tag_that_is_not_there_is_refused_and_nothing_changes(
    lifecycle, registry, client_factory
):
    manifest, make = lifecycle
    write_manifest(manifest, f"oci://{registry.host}/models/fusion:9.9.9")
    client = await client_factory(make(**{"lifecycle.insecure_registries": [registry.host]}))
    report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
    assert report["report"]["fusion"].startswith("refused"), report
    assert "HTTP 404" in report["report"]["fusion"]
    assert (await models(client))["fusion"]["version"] == "1.0.0"


async def test_kill_9_mid_download_then_restart_offline_serves_the_last_known_good(
    tmp_path, aiohttp_server
):
    """The daemon is killed while a download stalls half way; it restarts with the model
    server gone and is ready on the cached last-known-good version, no partial file left."""
    v101 = publish(tmp_path / "v101", fusion_model("1.0.1"), "1.0.1")
    v102 = publish(tmp_path / "v102", fusion_model("1.0.2"), "1.0.2")
    big = Path(v102.removeprefix("file://")).parent
    data = (big / "model.onnx").read_bytes()
    stalled = asyncio.Event()

    async def sidecar(request: web.Request) -> web.Response:
        return web.Response(body=(big / "model.json").read_bytes())

    async def model(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        stalled.set()
        await asyncio.sleep(3600)
        return resp

    app = web.Application()
    app.router.add_get("/fusion/model.json", sidecar)
    app.router.add_get("/fusion/model.onnx", model)
    server = await aiohttp_server(app)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    manifest = tmp_path / "fleet.yaml"
    state = tmp_path / "state"
    env = {
        "EDGE_AGENT_LIFECYCLE__MANIFEST": str(manifest),
        "EDGE_AGENT_LIFECYCLE__POLL_INTERVAL_S": "3600",
        "EDGE_AGENT_LIFECYCLE__RETRY_ATTEMPTS": "1",
        "EDGE_AGENT_ADMIN__TOKEN_FILE": str(token),
        "EDGE_AGENT_VALIDATE_GOLDEN": "true",
    }
    write_manifest(manifest, v101)
    first = Daemon(["--state-dir", str(state)], env=env)
    try:
        await first.wait_ready()
        async with aiohttp.ClientSession() as http:
            for _ in range(600):  # the first sync runs by itself once the models are ready
                async with http.get(first.url + "/v1/models") as resp:
                    served = {m["name"]: m for m in (await resp.json())["models"]}
                if served["fusion"]["version"] == "1.0.1":
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("never swapped to 1.0.1")
            write_manifest(manifest, str(server.make_url("/fusion/model.json")))
            sync = asyncio.create_task(http.post(first.url + "/v1/admin/sync", headers=AUTH))
            await asyncio.wait_for(stalled.wait(), 30)
            partial = list((state / "models" / "blobs" / "sha256").glob(".partial-*"))
            assert partial, "the download should be half written now"
            first.signal(signal.SIGKILL)
            first.wait(10)
            sync.cancel()
    finally:
        first.stop()
    await server.close()  # the model server is gone too
    second = Daemon(["--state-dir", str(state)], env=env)
    try:
        await second.wait_ready()
        async with aiohttp.ClientSession() as http, http.get(second.url + "/v1/models") as r:
            served = {m["name"]: m for m in (await r.json())["models"]}
        assert served["fusion"]["version"] == "1.0.1"
        assert served["defects"]["version"] == "1.0.0"
    finally:
        second.stop()
    assert not list((state / "models" / "blobs" / "sha256").glob(".partial-*"))


class NetnsRegistry(Registry):
    """The registry on the other side of a veth pair, in a network namespace of its own: the
    factory uplink, which ``ip link set ... down`` unplugs."""

    def __init__(self, root: Path) -> None:
        require(shutil.which("ip") is not None, "iproute2 (ip)")
        tag = f"{os.getpid() % 10000}"
        self.ns, self.dev = f"edge-ns{tag}", f"edgev{tag}"
        subnet = 10 + os.getpid() % 200
        self.local, self.remote = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
        for cmd in (
            ["ip", "netns", "add", self.ns],
            ["ip", "link", "add", self.dev, "type", "veth", "peer", "name", self.dev + "p"],
            ["ip", "link", "set", self.dev + "p", "netns", self.ns],
            ["ip", "addr", "add", f"{self.local}/30", "dev", self.dev],
            ["ip", "link", "set", self.dev, "up"],
            ["ip", "netns", "exec", self.ns, "ip", "addr", "add", f"{self.remote}/30", "dev",
             self.dev + "p"],
            ["ip", "netns", "exec", self.ns, "ip", "link", "set", self.dev + "p", "up"],
            ["ip", "netns", "exec", self.ns, "ip", "link", "set", "lo", "up"],
        ):
            done = subprocess.run(cmd, capture_output=True, check=False)
            if done.returncode != 0:
                self.cleanup()
                require(False, f"network namespaces ({' '.join(cmd)}: {done.stderr!r})")
        super().__init__(root, bind=self.remote, wrap=["ip", "netns", "exec", self.ns])

    def link(self, up: bool) -> None:
        subprocess.run(["ip", "link", "set", self.dev, "up" if up else "down"], check=True)

    def cleanup(self) -> None:
        subprocess.run(["ip", "link", "del", self.dev], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, check=False)


@pytest.fixture
def uplink(tmp_path) -> Iterator[NetnsRegistry]:
    r = NetnsRegistry(tmp_path)
    yield r
    r.stop()
    r.cleanup()


async def test_an_unplugged_uplink_keeps_serving_reports_it_and_syncs_when_it_is_back(
    lifecycle, uplink, client_factory, tmp_path
):
    v101 = publish(tmp_path / "v101", fusion_model("1.0.1"), "1.0.1")
    v102 = publish(tmp_path / "v102", fusion_model("1.0.2"), "1.0.2")
    ref101 = uplink.push(Path(v101.removeprefix("file://")).parent, "models/fusion:1.0.1")
    ref102 = uplink.push(Path(v102.removeprefix("file://")).parent, "models/fusion:1.0.2")
    manifest, make = lifecycle
    write_manifest(manifest, ref101)
    client = await client_factory(make(**{"lifecycle.insecure_registries": [uplink.host]}))
    report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
    assert (await models(client))["fusion"]["version"] == "1.0.1", report

    uplink.link(up=False)
    write_manifest(manifest, ref102)  # the ConfigMap is local: the registry is what is gone
    report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
    assert report["report"]["fusion"].startswith("unreachable"), report
    assert (await summary(client))[("edge_control_plane_connected", ())] == 0
    sample = (FUSION.folder / "sample-request.json").read_bytes()
    assert (await client.post("/v2/models/fusion/infer", data=sample)).status == 200
    assert (await models(client))["fusion"]["version"] == "1.0.1"

    uplink.link(up=True)
    report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
    assert report["report"]["fusion"].startswith("swapped to 1.0.2"), report
    got = await summary(client)
    assert got[("edge_control_plane_connected", ())] == 1
    assert ("edge_model_sync_last_success_timestamp_seconds", ()) in got


async def test_registry_credentials_go_through_the_bearer_token_dance(
    lifecycle, registry, client_factory, tmp_path, aiohttp_server
):
    """Docker/distribution token auth needs a JWT-signing token server, which cannot be set up
    here: this stand-in sits in front of the real registry and plays that part (a 401 with a
    Bearer challenge, a token endpoint taking basic credentials); the content is the real
    registry's."""
    published = publish(tmp_path / "v101", fusion_model("1.0.1"), "1.0.1")
    registry.push(Path(published.removeprefix("file://")).parent, "models/fusion:1.0.1")
    seen: dict[str, object] = {}

    async def token(request: web.Request) -> web.Response:
        seen["basic"] = request.headers.get("Authorization")
        seen["scope"] = request.query.get("scope")
        return web.json_response({"token": "tkn-123"})

    async def proxy(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != "Bearer tkn-123":
            realm = str(request.url.with_path("/token").with_query(None))
            return web.Response(status=401, headers={
                "WWW-Authenticate": f'Bearer realm="{realm}",service="edge-registry"'})
        async with aiohttp.ClientSession() as http, http.get(
            f"http://{registry.host}{request.path_qs}", headers={"Accept": request.headers.get(
                "Accept", "*/*")}) as upstream:
            body = await upstream.read()
            return web.Response(body=body, status=upstream.status, headers={
                "Content-Type": upstream.headers.get("Content-Type", "application/octet-stream")})

    app = web.Application()
    app.router.add_get("/token", token)
    app.router.add_get("/v2/{tail:.*}", proxy)
    front = await aiohttp_server(app)
    host = f"127.0.0.1:{front.port}"
    creds = tmp_path / "registry-credentials.json"
    creds.write_text(json.dumps({host: {"username": "line3", "password": "pw"}}))
    manifest, make = lifecycle
    write_manifest(manifest, f"oci://{host}/models/fusion:1.0.1")
    client = await client_factory(make(**{"lifecycle.insecure_registries": [host],
                                          "lifecycle.registry_credentials": str(creds)}))
    report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
    assert (await models(client))["fusion"]["version"] == "1.0.1", report
    assert seen["basic"] == "Basic " + base64.b64encode(b"line3:pw").decode()
    assert seen["scope"] == "repository:models/fusion:pull"


async def test_the_registry_killed_mid_download_leaves_no_partial_blob_and_sync_resumes(
    lifecycle, client_factory, tmp_path, aiohttp_server
):
    """A slow uplink in front of the real registry (this in-test relay only throttles); the
    registry process is killed while the model blob is half way through."""
    (tmp_path / "r1").mkdir()
    registry = Registry(tmp_path / "r1")
    # 48 MB (an unused initializer pads it): more than the sockets between us buffer, so the
    # kill really cuts the stream.
    padded = fusion_model("1.0.1")
    padded.graph.initializer.append(
        onnx.numpy_helper.from_array(np.zeros(12 * 1024 * 1024, np.float32), "padding"))
    published = publish(tmp_path / "v101", padded, "1.0.1")
    registry.push(Path(published.removeprefix("file://")).parent, "models/fusion:1.0.1")
    halfway = asyncio.Event()

    async def relay(request: web.Request) -> web.StreamResponse:
        try:
            async with aiohttp.ClientSession() as http, http.get(
                f"http://{registry.host}{request.path_qs}",
                headers={"Accept": request.headers.get("Accept", "*/*")},
            ) as upstream:
                resp = web.StreamResponse(status=upstream.status, headers={
                    "Content-Type": upstream.headers.get("Content-Type", "application/json")})
                if upstream.content_length:
                    resp.content_length = upstream.content_length
                await resp.prepare(request)
                sent = 0
                async for chunk in upstream.content.iter_chunked(256 * 1024):
                    await resp.write(chunk)
                    sent += len(chunk)
                    if sent >= 1024 * 1024 and not halfway.is_set():
                        halfway.set()
                        await asyncio.sleep(0.5)  # the registry dies meanwhile
                return resp
        except aiohttp.ClientError:
            if request.transport is not None:
                request.transport.close()  # the downstream sees the cut
            raise

    app = web.Application()
    app.router.add_get("/v2/{tail:.*}", relay)
    front = await aiohttp_server(app)
    host = f"127.0.0.1:{front.port}"
    manifest, make = lifecycle
    write_manifest(manifest, f"oci://{host}/models/fusion:1.0.1")
    settings = make(**{"lifecycle.insecure_registries": [host], "lifecycle.retry_attempts": 3})
    client = await client_factory(settings)
    sync = asyncio.create_task(client.post("/v1/admin/sync", headers=AUTH))
    await asyncio.wait_for(halfway.wait(), 30)
    registry.stop()
    report = await (await sync).json()
    assert report["report"]["fusion"].startswith("unreachable"), report
    blobs = settings.state_dir / "models" / "blobs" / "sha256"
    assert not blobs.exists() or not list(blobs.iterdir())
    assert (await models(client))["fusion"]["version"] == "1.0.0"
    # The registry comes back (same storage, same address): the next sync completes.
    restarted = Registry(tmp_path / "r1", port=registry.port)
    try:
        report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
        # (the background sync may have got there first: then it is already running)
        assert report["report"]["fusion"].startswith(("swapped to 1.0.1", "running 1.0.1"))
        assert (await models(client))["fusion"]["version"] == "1.0.1"
        expected = hashlib.sha256(padded.SerializeToString()).hexdigest()
        assert sorted(p.name for p in blobs.iterdir()) == [expected]
    finally:
        restarted.stop()
