"""Soak: steady multi-camera load on both bundled models of a real daemon process, while the
fleet manifest flips the fusion model between two versions and the model server (a real HTTP
server on a real port) goes away now and then. 60 s in CI; ``EDGE_SOAK_S=600`` for the
10-minute run by hand.

No request may fail but for load-shedding 503s, the swaps must happen, the outages must be
seen, and the daemon's threads and memory must not grow, nor its file descriptors once the
load's connections are closed."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from lifecycle_helpers import FUSION, fusion_model, publish, samples
from support import Daemon, free_port, shed_for_load

from benchmarks.load import Load, open_loop, proc_stats
from inference.bundled import BUNDLE_ROOT

SOAK_S = float(os.environ.get("EDGE_SOAK_S", "60"))
SWAP_EVERY_S = 10.0
CYCLE_S, OUTAGE_S = 30.0, 8.0  # the model server is down for the last 8 s of every 30 s

pytestmark = pytest.mark.slow


def open_fds(pid: int) -> list[str]:
    """What each of a process's descriptors points at (a file, socket:[...], pipe:[...])."""
    fds = Path(f"/proc/{pid}/fd")
    out = []
    for fd in fds.iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            out.append(os.readlink(fd))
    return sorted(out)


class ModelServer:
    """Versions and the fleet manifest over HTTP; ``down()`` closes the port (an outage)."""

    def __init__(self, root, port: int) -> None:
        self.port = port
        self.versions = {
            v: publish(root / v, fusion_model(v), v) for v in ("1.0.1", "1.0.2")
        }
        self.stable = "1.0.1"
        app = web.Application()
        app.router.add_get("/fleet.yaml", self._manifest)
        app.router.add_static("/v", root)
        self._runner = web.AppRunner(app)
        self._site: web.TCPSite | None = None

    def url(self, version: str) -> str:
        return f"http://127.0.0.1:{self.port}/v/{version}/model.json"

    async def _manifest(self, request: web.Request) -> web.Response:
        entry = {"stable": {"source": self.url(self.stable)}, "min_score": 0.9}
        return web.Response(text=json.dumps({"models": {"fusion": entry}}))

    async def up(self) -> None:
        if self._site is None:
            if not self._runner.server:
                await self._runner.setup()
            self._site = web.TCPSite(self._runner, "127.0.0.1", self.port)
            await self._site.start()

    async def down(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None
            # A cut link kills the pooled keep-alive connections too, not just the listener.
            assert self._runner.server is not None
            for conn in list(self._runner.server.connections):
                conn.force_close()

    async def close(self) -> None:
        await self._runner.cleanup()


async def test_soak(tmp_path):
    server = ModelServer(tmp_path / "share", free_port())
    await server.up()
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({
        "models": [{"name": "defects", "bundled": "defects"}, {"name": "fusion",
                                                                "bundled": "fusion"}],
        "runtime": {"intra_op_threads": 1},
        "lifecycle": {
            "manifest": f"http://127.0.0.1:{server.port}/fleet.yaml",
            "poll_interval_s": 1,
            "retry_attempts": 2,
            "retry_max_s": 0.2,
            "stall_timeout_s": 2,
            "keep_versions": 2,
        },
    }))
    d = Daemon(["--config", str(config), "--state-dir", str(tmp_path / "state")])
    frame = (BUNDLE_ROOT / "defects" / "golden" / "000.jpg").read_bytes()
    window = (FUSION.folder / "sample-request.json").read_bytes()
    load = Load()
    versions_seen: list[str] = []
    connected_seen: set[float] = set()
    stats: list[tuple[float, dict[str, int]]] = []
    try:
        await d.wait_ready()
        idle_before = proc_stats(d.proc.pid)  # no client connected yet
        start = time.monotonic()

        async def control() -> None:
            """Flip the stable version, take the server down and up, sample the daemon."""
            while (t := time.monotonic() - start) < SOAK_S:
                server.stable = "1.0.2" if int(t // SWAP_EVERY_S) % 2 else "1.0.1"
                if t % CYCLE_S >= CYCLE_S - OUTAGE_S:
                    await server.down()
                else:
                    await server.up()
                async with http.get(d.url + "/v1/models") as resp:
                    models = {m["name"]: m for m in (await resp.json())["models"]}
                versions_seen.append(models["fusion"]["version"])
                async with http.get(d.url + "/metrics/summary") as resp:
                    got = samples(await resp.text())
                if ("edge_control_plane_connected", ()) in got:  # absent before a first sync
                    connected_seen.add(got[("edge_control_plane_connected", ())])
                stats.append((t, proc_stats(d.proc.pid)))
                await asyncio.sleep(0.5)
            await server.up()

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            detect = d.url + "/v1/models/defects/detect"
            infer = d.url + "/v2/models/fusion/infer"
            cameras = [
                open_loop(http, detect, frame, {"Content-Type": "image/jpeg",
                                                "X-Camera-Id": f"cam-{i}"}, 2.0, SOAK_S, load)
                for i in range(4)
            ]
            sensors = [open_loop(http, infer, window, {}, 5.0, SOAK_S, load) for _ in range(2)]
            await asyncio.gather(control(), *cameras, *sensors)
        # Every client connection is closed now. The daemon's descriptors under load follow
        # the load (a busy machine answers late, the cameras open more keep-alive connections);
        # once they are gone, what is left must be what it had before the load.
        idle_after = proc_stats(d.proc.pid)
        deadline = time.monotonic() + 30
        while idle_after["fds"] > idle_before["fds"] + 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            idle_after = proc_stats(d.proc.pid)
        leaked = open_fds(d.proc.pid)
    finally:
        d.stop()
        await server.close()

    statuses: dict[int, int] = {}
    for a in load.answers:
        statuses[a.status] = statuses.get(a.status, 0) + 1
    swaps = sum(1 for a, b in itertools.pairwise(versions_seen) if a != b)
    warm = next(s for t, s in stats if t >= min(15.0, SOAK_S / 4))
    end = stats[-1][1]
    peak = {k: max(s[k] for _, s in stats) for k in end}
    print(
        f"\nsoak {SOAK_S:g} s: {len(load.answers)} requests {statuses}; {swaps} swaps "
        f"{sorted(set(versions_seen))}; control plane connected {sorted(connected_seen)}; "
        f"after warm-up -> end (peak): fds {warm['fds']} -> {end['fds']} ({peak['fds']}; "
        f"idle {idle_before['fds']} before the load, {idle_after['fds']} after), "
        f"threads {warm['threads']} -> {end['threads']} ({peak['threads']}), "
        f"RSS {warm['rss'] / 2**20:.0f} -> {end['rss'] / 2**20:.0f} "
        f"({peak['rss'] / 2**20:.0f}) MiB"
    )
    failed = [a for a in load.answers if a.status not in (200, 503)]
    assert not failed, failed[:5]
    shed = [a for a in load.answers if a.status == 503]
    assert all(shed_for_load(a.reason) for a in shed), shed[:3]
    assert swaps >= 2, versions_seen
    assert connected_seen == {0.0, 1.0}  # the outages were noticed, and the recoveries
    assert idle_after["fds"] <= idle_before["fds"] + 2, leaked
    assert end["threads"] <= warm["threads"] + 1
    assert end["rss"] <= warm["rss"] * 1.10
