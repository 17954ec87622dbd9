"""Two daemons on one state dir, as the old and the surge pod of a DaemonSet update share the
node's hostPath: both sync the same fleet manifest at once while one or the other is killed
with SIGKILL at a random moment (downloading, swapping, collecting garbage, writing state.json)
and started again.

Real daemons (``python -m agent serve``), a real HTTP source that sends each version slowly
(so kills land mid-download), real files. Rounds and kill moments come from a fixed seed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from lifecycle_helpers import FUSION, fusion_model, publish
from support import Daemon

ROUNDS = 6
SEED = 21
MODELS = ("fusion", "lookup")  # the bundled fusion model under two names


async def slow_share(root: Path) -> tuple[web.AppRunner, str]:
    """The versions over HTTP, each file in 16 KB pieces 0.1 s apart (1.3 s a model, longer than a
    daemon takes to start and recover its cache: a restart lands in the other one's download)."""

    async def get(request: web.Request) -> web.StreamResponse:
        path = root / request.match_info["path"]
        if not path.is_file():
            raise web.HTTPNotFound()
        data = path.read_bytes()
        resp = web.StreamResponse()
        resp.content_length = len(data)
        await resp.prepare(request)
        for i in range(0, len(data), 16384):
            await resp.write(data[i:i + 16384])
            await asyncio.sleep(0.1)
        return resp

    app = web.Application()
    app.router.add_get("/{path:.*}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


def write_manifest(path: Path, sources: dict[str, str]) -> None:
    doc = {"models": {name: {"stable": {"source": source}, "min_score": 0.5, "max_drop": 0.5}
                      for name, source in sources.items()}}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)  # a ConfigMap update is a rename too


def start(config: Path, state: Path) -> Daemon:
    return Daemon(["--config", str(config), "--state-dir", str(state)])


async def served(http: aiohttp.ClientSession, daemon: Daemon) -> dict[str, tuple[str, str]]:
    """Model -> (version, digest hex) of what ``daemon`` serves now."""
    async with http.get(daemon.url + "/v1/models") as resp:
        body = await resp.json()
    return {m["name"]: (m["version"], m["digest"].removeprefix("sha256:"))
            for m in body["models"]}


@pytest.mark.slow  # about 30 s: six rounds of a kill, a restart and two slow downloads
async def test_two_daemons_share_a_state_dir_through_kills_at_random_moments(tmp_path):
    rng = random.Random(SEED)
    share = tmp_path / "share"
    for i in range(4):
        publish(share / f"v{i}", fusion_model(f"2.0.{i}"), f"2.0.{i}")
    runner, base = await slow_share(share)
    sources = [f"{base}/v{i}/model.json" for i in range(4)]
    manifest = tmp_path / "fleet.yaml"
    write_manifest(manifest, {"fusion": sources[0], "lookup": sources[1]})
    config = tmp_path / "edge.yaml"
    config.write_text(json.dumps({
        "models": [{"name": name, "bundled": "fusion"} for name in MODELS],
        # keep_versions 1: every swap collects the version before it, a blob the other
        # daemon may still serve
        "lifecycle": {"manifest": str(manifest), "poll_interval_s": 1, "watch_interval_s": 0.1,
                      "keep_versions": 1, "retry_max_s": 1},
    }))
    state = tmp_path / "state"
    models_dir = state / "models"
    blobs = models_dir / "blobs" / "sha256"
    daemons = [start(config, state), start(config, state)]
    sample = (FUSION.folder / "sample-request.json").read_bytes()
    problems: list[str] = []
    answers: list[int] = []
    try:
        await asyncio.gather(*(d.wait_ready(120) for d in daemons))
        async with aiohttp.ClientSession() as http:

            async def converged(daemon: Daemon, want: dict[str, str]) -> None:
                for _ in range(600):
                    got = await served(http, daemon)
                    if {name: got[name][0] for name in want} == want:
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"never reached {want}: {got}\n{daemon.output[-3000:]}")

            async def camera(daemon: Daemon, stop: asyncio.Event) -> None:
                """The survivor answers every request, whatever the other one goes through."""
                while not stop.is_set():
                    for name in MODELS:
                        async with http.post(f"{daemon.url}/v2/models/{name}/infer",
                                             data=sample) as resp:
                            answers.append(resp.status)
                            if resp.status != 200:
                                problems.append(f"{name}: {resp.status} {await resp.text()}")

            async def watch(alive: list[Daemon], stop: asyncio.Event) -> None:
                """state.json always whole, with both models once it has them; no blob a live
                daemon serves (before and after the look) ever missing."""
                both = False
                while not stop.is_set():
                    try:
                        doc = json.loads((models_dir / "state.json").read_text())
                        names = set(doc["models"])
                        if both and names != set(MODELS):
                            problems.append(f"state.json lost a model: {names}")
                        both = both or names == set(MODELS)
                    except FileNotFoundError:
                        pass
                    except ValueError as exc:
                        problems.append(f"state.json not JSON: {exc}")
                    for daemon in alive:
                        before = await served(http, daemon)
                        missing = {n: d for n, (_, d) in before.items()
                                   if d != FUSION.sha256 and not (blobs / d).is_file()}
                        after = await served(http, daemon)
                        for name, digest in missing.items():
                            if after[name][1] == digest:
                                problems.append(f"{name} blob {digest[:12]} gone while served")
                    await asyncio.sleep(0.02)

            target = {"fusion": "2.0.0", "lookup": "2.0.1"}
            await asyncio.gather(*(converged(d, target) for d in daemons))
            for round_ in range(1, ROUNDS + 1):
                victim = rng.randrange(2)
                survivor = daemons[1 - victim]
                target = {"fusion": f"2.0.{round_ * 2 % 4}",
                          "lookup": f"2.0.{(round_ * 2 + 1) % 4}"}
                stop = asyncio.Event()
                tasks = [asyncio.create_task(camera(survivor, stop)),
                         asyncio.create_task(watch([survivor], stop))]
                write_manifest(manifest, {name: sources[int(v[-1])] for name, v in target.items()})
                await asyncio.sleep(rng.uniform(0.0, 3.0))  # downloading, swapping, collecting
                daemons[victim].signal(signal.SIGKILL)
                daemons[victim].wait(30)
                daemons[victim] = start(config, state)  # while the survivor may be downloading
                await daemons[victim].wait_ready(120)
                await asyncio.gather(*(converged(d, target) for d in daemons))
                stop.set()
                await asyncio.gather(*tasks)
                assert not problems, (round_, problems)
            # Both alive and idle: no partial download, no temp file, no dead owner left.
            leftovers = [p.name for p in blobs.iterdir() if not p.name.isalnum()]
            leftovers += [p.name for p in models_dir.rglob("*.tmp")]
            assert leftovers == []
            owners = {p.stem for p in (models_dir / "owners").iterdir()}
            assert len(owners) == 2, owners
            kept = {p.name for p in blobs.iterdir()}
            serving = {d for daemon in daemons for _, d in (await served(http, daemon)).values()}
            assert kept == serving - {FUSION.sha256}  # keep_versions 1: nothing else
    finally:
        for daemon in daemons:
            daemon.stop()
        await runner.cleanup()
    assert answers
    assert set(answers) == {200}
    for daemon in daemons:
        assert "model sync failed" not in daemon.output, daemon.output[-3000:]
        assert "refused" not in daemon.output, daemon.output[-3000:]
