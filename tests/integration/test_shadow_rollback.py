"""Shadow runs on live frames and the rollback after a swap, with real daemons and models.

The candidate that must be rolled back is the bundled detector with the head's weights for
classes 0 and 3 exchanged, packed with a golden set whose frames hold only classes 1 and 2:
it passes its gate, and calls every scratch a stain on the frames the cameras send.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import threading
from pathlib import Path

import pytest
from lifecycle_helpers import (
    AUTH,
    DEFECTS,
    FUSION,
    defects_onnx,
    fusion_model,
    golden_folder,
    models,
    pack,
    publish,
    samples,
)

from agent.errors import DrainingError
from agent.http import keys

ONLY_1_AND_2 = ["003", "005", "006", "007", "009", "015", "017", "029", "035", "039"]
WITH_0_AND_3 = ["000", "002", "004", "010", "012", "014", "016", "020"]  # the cameras' frames
BUNDLED = DEFECTS.sidecar["version"]


def share(folder: Path, onnx_file: Path, version: str) -> str:
    """An unpacked version (no golden set: its gate is unchecked); its file:// URL."""
    folder.mkdir(parents=True)
    data = onnx_file.read_bytes()
    (folder / "model.onnx").write_bytes(data)
    sidecar = {"name": "defects", "version": version, "kind": "yolov8", "file": "model.onnx",
               "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "model.json").write_text(json.dumps(sidecar))
    return (folder / "model.json").as_uri()


def manifest_for(path: Path, source: str, **policy) -> None:
    entry = {"stable": {"source": source}, "min_score": 0.5, "max_drop": 0.05, **policy}
    path.write_text(json.dumps({"models": {"defects": entry}}))


BAKE = {"min_agreement": 0.8, "min_samples": 5, "shadow": {"percent": 100, "max_per_s": 20}}
BEFORE_AND_BAKE = {**BAKE, "shadow": {**BAKE["shadow"], "before_swap_s": 120}}


async def sync(client) -> str:
    resp = await client.post("/v1/admin/sync", headers=AUTH)
    assert resp.status == 200
    return (await resp.json())["report"]["defects"]


async def detect(client, frame: bytes):
    return await client.post("/v1/models/defects/detect", data=frame,
                             headers={"Content-Type": "image/jpeg"})


def frames(names: list[str]) -> list[bytes]:
    return [(DEFECTS.golden_path / f"{n}.jpg").read_bytes() for n in names]


async def wait_for(predicate, what: str, timeout_s: float = 120.0) -> None:
    for _ in range(int(timeout_s / 0.1)):
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def assert_one_version(client, version: str) -> None:
    """``version`` serves alone: no shadow, no rollback, no shadow or rollback series."""
    described = (await models(client))["defects"]
    assert described["version"] == version
    assert "shadow" not in described
    assert "rollbacks" not in described
    for path in ("/metrics", "/metrics/summary"):
        text = await (await client.get(path)).text()
        assert "edge_model_shadow" not in text
        assert "edge_model_rollbacks" not in text


@pytest.fixture
def settings(lifecycle):
    manifest, make = lifecycle
    return manifest, make(models=[{"name": "defects", "bundled": "defects"}],
                          revalidate_interval_s=0)


class Cameras:
    """Cameras sending ``frames`` in a loop through the in-process test client: the versions
    that answered, in order, and any failed request."""

    def __init__(self, client, sent: list[bytes], count: int = 2) -> None:
        self.answers: list[str] = []
        self.failures: list[str] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._camera(client, sent, i)) for i in range(count)]

    async def _camera(self, client, sent: list[bytes], index: int) -> None:
        i = index
        while not self._stop.is_set():
            resp = await detect(client, sent[i % len(sent)])
            body = await resp.json()
            if resp.status != 200:
                self.failures.append(f"{resp.status} {body}")
                continue
            self.answers.append(body["version"])
            i += 1

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


def shadow_threads() -> dict[str, int]:
    """This process's shadow threads and their nice values."""
    return {t.name: os.getpriority(os.PRIO_PROCESS, t.native_id) for t in threading.enumerate()
            if t.name.startswith("shadow-") and t.native_id is not None}


async def test_a_same_weights_version_agrees_before_its_swap_and_in_the_bake(
    settings, client_factory, tmp_path
):
    manifest, cfg = settings
    source = share(tmp_path / "v110", defects_onnx(tmp_path / "d.onnx", "1.1.0"), "1.1.0")
    # 30 s: room for 5 samples at nice 19 on a busy machine before the bake ends.
    manifest_for(manifest, source, bake_s=30, **BEFORE_AND_BAKE)
    client = await client_factory(cfg)
    service = client.server.app[keys.SERVICE]
    cameras = Cameras(client, frames(WITH_0_AND_3))
    seen_before: dict = {}

    async def watch() -> None:  # the candidate, shadowed before the swap
        while not seen_before:
            shadow = service.shadows.get("defects")
            if shadow is not None and shadow.stage == "before swap":
                seen_before.update(shadow.describe(), threads=shadow_threads())
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        report = await sync(client)
    finally:
        await cameras.stop()
        watcher.cancel()
    print(f"before the swap: {seen_before}; {report}")
    assert report.startswith("swapped to 1.1.0"), report
    agreement = re.search(r"shadowed before the swap: agreement ([0-9.]+) over (\d+)", report)
    assert agreement is not None, report
    assert float(agreement[1]) >= 0.95, report
    assert int(agreement[2]) >= 5, report
    assert not cameras.failures, cameras.failures[:5]
    assert seen_before["version"] == "1.1.0"  # the candidate was the shadow
    assert seen_before["provider"] == "cpu"
    assert seen_before["intra_op_threads"] == 1
    assert seen_before["threads"]
    assert set(seen_before["threads"].values()) == {19}
    assert set(cameras.answers[:3]) == {BUNDLED}  # the running version answered meanwhile
    shadow = (await models(client))["defects"]["shadow"]
    assert shadow["version"] == BUNDLED
    assert shadow["stage"] == "bake"
    previous = service.shadows["defects"].record.batcher
    seen: dict = {}

    async def sampled() -> bool:
        resp = await detect(client, frames(WITH_0_AND_3)[len(seen) % 8])
        assert resp.status == 200
        assert (await resp.json())["version"] == "1.1.0"
        described = (await models(client))["defects"]
        if "shadow" not in described:  # the bake ended first: too slow a machine to judge
            raise AssertionError(f"the bake ended with {seen.get('samples')} samples")
        seen.update(described["shadow"])
        return seen["samples"] >= 5

    await wait_for(sampled, "5 shadow samples")
    print(f"same weights: shadow {seen}")
    assert seen["agreement"] >= 0.95, seen
    summary = samples(await (await client.get("/metrics/summary")).text())
    assert summary[("edge_model_shadow_agreement",
                    (("model", "defects"), ("version", BUNDLED)))] >= 0.95
    full = samples(await (await client.get("/metrics")).text())
    assert full[("edge_model_shadow_samples_total",
                 (("model", "defects"), ("version", BUNDLED)))] >= 5

    async def baked() -> bool:
        return "shadow" not in (await models(client))["defects"]

    await wait_for(baked, "the end of the bake")
    with pytest.raises(DrainingError):  # the previous version was unloaded
        previous.reserve()
    await assert_one_version(client, "1.1.0")
    assert (await detect(client, frames(WITH_0_AND_3)[0])).status == 200


async def test_a_version_rolled_back_while_a_sync_waits_to_swap_it_in_stays_out(
    settings, client_factory, tmp_path
):
    """A bake's rollback publishes the previous version, then records the bad one under the
    swap lock. A sync that read the running version in between, and found the bad one not yet
    recorded, must not swap it back in once it gets the lock (it did: a rolled-back version
    came back a moment after its rollback)."""
    manifest, cfg = settings
    share(tmp_path / "v130", defects_onnx(tmp_path / "c.onnx", "1.3.0"), "1.3.0")
    manifest_for(manifest, (tmp_path / "v130" / "model.json").as_uri())
    digest = hashlib.sha256((tmp_path / "v130" / "model.onnx").read_bytes()).hexdigest()
    client = await client_factory(cfg)
    app = client.server.app
    syncer, cache = app[keys.SYNCER], app[keys.MODEL_CACHE]
    lock = syncer.swapper.lock("defects")
    await lock.acquire()  # what the rollback holds while it records the bad version
    try:
        pending = asyncio.create_task(sync(client))

        async def fetched() -> bool:  # so the sync's first look at the rejections is behind it
            return await asyncio.to_thread(cache.has, digest)

        await wait_for(fetched, "the candidate's download")
        await asyncio.to_thread(cache.reject, "defects", digest)
    finally:
        lock.release()
    report = await pending
    assert report.startswith("not retried: 1.3.0"), report
    assert (await models(client))["defects"]["version"] == BUNDLED
    assert (await sync(client)).startswith("not retried: 1.3.0")


async def test_a_version_that_passes_its_golden_set_but_disagrees_live_is_rolled_back(
    settings, client_factory, tmp_path, caplog
):
    caplog.set_level(logging.INFO, logger="agent.models.bake")
    manifest, cfg = settings
    bad = defects_onnx(tmp_path / "bad.onnx", "1.2.0", swap_classes=(0, 3))
    sidecar = pack(bad, golden_folder(tmp_path / "g", frames=ONLY_1_AND_2), tmp_path / "v120",
                   "defects", "1.2.0")
    manifest_for(manifest, (tmp_path / "v120" / "model.json").as_uri(), bake_s=120, **BAKE)
    client = await client_factory(cfg)
    cameras = Cameras(client, frames(WITH_0_AND_3))
    try:
        report = await sync(client)  # the swap, under the cameras' load
        assert report.startswith("swapped to 1.2.0"), report
        assert "passed: map50" in report, report

        async def rolled_back() -> bool:
            return (await models(client))["defects"].get("rollbacks") == 1

        await wait_for(rolled_back, "the rollback")
        await asyncio.sleep(0.5)  # the cameras go on across it
    finally:
        await cameras.stop()
    answers = cameras.answers
    assert not cameras.failures, cameras.failures[:5]
    assert "1.2.0" in answers, answers[-5:]
    assert answers[-1] == BUNDLED, answers[-5:]
    described = (await models(client))["defects"]
    assert described["version"] == BUNDLED
    assert "shadow" not in described
    last = described["last_rollback"]
    print(f"{len(answers)} answers ({answers.count('1.2.0')} by 1.2.0); rolled back: {last}")
    assert last["version"] == "1.2.0", last
    assert last["agreement"] < 0.8, last
    assert "shadow agreement" in last["reason"], last
    lines = [r for r in caplog.records if r.getMessage() == "model rolled back"]
    assert len(lines) == 1
    assert lines[0].levelno == logging.WARNING
    full = samples(await (await client.get("/metrics")).text())
    assert full[("edge_model_rollbacks_total", (("model", "defects"),))] == 1
    state = json.loads((cfg.state_dir / "models" / "state.json").read_text())
    assert state["rejected"] == {"defects": sidecar["sha256"]}
    assert all(v["model"] != sidecar["sha256"] for v in state["models"].get("defects", []))
    assert (await sync(client)).startswith("not retried: 1.2.0")
    await client.close()
    # A restart neither starts from the bad version nor syncs back to it.
    restarted = await client_factory(cfg)
    assert (await models(restarted))["defects"]["version"] == BUNDLED
    assert (await sync(restarted)).startswith("not retried: 1.2.0")
    assert (await models(restarted))["defects"]["version"] == BUNDLED


async def test_a_candidate_that_disagrees_live_before_its_swap_is_refused_and_not_retried(
    settings, client_factory, tmp_path
):
    manifest, cfg = settings
    bad = defects_onnx(tmp_path / "bad.onnx", "1.2.0", swap_classes=(0, 3))
    sidecar = pack(bad, golden_folder(tmp_path / "g", frames=ONLY_1_AND_2), tmp_path / "v120",
                   "defects", "1.2.0")
    manifest_for(manifest, (tmp_path / "v120" / "model.json").as_uri(), bake_s=120,
                 **BEFORE_AND_BAKE)
    client = await client_factory(cfg)
    cameras = Cameras(client, frames(WITH_0_AND_3))
    try:
        report = await sync(client)
    finally:
        await cameras.stop()
    print(f"{len(cameras.answers)} answers; {report}")
    assert report.startswith("refused: version 1.2.0 of 'defects' disagreed with the running "
                             "version on live frames before its swap"), report
    assert not cameras.failures, cameras.failures[:5]
    assert set(cameras.answers) == {BUNDLED}  # the candidate never answered
    described = (await models(client))["defects"]
    assert described["version"] == BUNDLED
    assert "shadow" not in described
    assert "rollbacks" not in described
    state = json.loads((cfg.state_dir / "models" / "state.json").read_text())
    assert state["rejected"] == {"defects": sidecar["sha256"]}
    assert (await sync(client)).startswith("not retried: 1.2.0")


async def test_a_bake_rolls_back_on_a_score_under_the_gate_the_manifest_sets_during_it(
    lifecycle, versions, client_factory
):
    """A version scoring 0.93 (the bundled one 0.97) passes min_score 0.9; while it bakes the
    manifest raises min_score to 0.95 (an operator tightening the gate): the bake's own score
    through the live queue is now under it, and the previous version comes back."""
    manifest, make = lifecycle
    entry = {"stable": {"source": versions["worse"]}, "min_score": 0.9, "max_drop": 0.05,
             "bake_s": 300}
    manifest.write_text(json.dumps({"models": {"fusion": entry}}))
    client = await client_factory(make(revalidate_interval_s=0))
    report = (await (await client.post("/v1/admin/sync", headers=AUTH)).json())["report"]
    # (the start-up sync, waiting for the first, may have run this one already)
    assert report["fusion"].split(" (")[0] in ("swapped to 1.1.0", "running 1.1.0"), report
    assert (await models(client))["fusion"]["shadow"]["stage"] == "bake"
    sample = (FUSION.folder / "sample-request.json").read_bytes()
    manifest.write_text(json.dumps({"models": {"fusion": {**entry, "min_score": 0.95}}}))
    report = (await (await client.post("/v1/admin/sync", headers=AUTH)).json())["report"]
    assert report["fusion"].startswith("running 1.1.0"), report
    failures: list[int] = []

    async def rolled_back() -> bool:
        resp = await client.post("/v2/models/fusion/infer", data=sample)
        if resp.status != 200:
            failures.append(resp.status)
        return "rollbacks" in (await models(client))["fusion"]

    await wait_for(rolled_back, "the rollback")
    fusion = (await models(client))["fusion"]
    print(f"fusion rolled back on its score: {fusion['last_rollback']}")
    assert not failures, failures
    assert fusion["version"] == FUSION.sidecar["version"]
    assert fusion["last_rollback"]["version"] == "1.1.0"
    assert re.fullmatch(r"golden-set score 0\.9[0-4]\d* < min_score 0\.95",
                        fusion["last_rollback"]["reason"]), fusion["last_rollback"]
    # Recorded just after the previous version serves again (under the swap lock).
    state_file = client.server.app[keys.SETTINGS].state_dir / "models" / "state.json"

    async def recorded() -> bool:
        return "fusion" in json.loads(state_file.read_text()).get("rejected", {})

    await wait_for(recorded, "the rejection in state.json")


@pytest.mark.parametrize("why", ["no bake_s", "no room"])
async def test_with_no_bake_no_second_version_is_kept_and_no_shadow_series_exist(
    lifecycle, client_factory, tmp_path, caplog, why
):
    """No bake in the manifest; or one, on a node that would not keep the free memory it is
    told to keep (``lifecycle.min_free_memory_mb`` over what this machine has)."""
    manifest, make = lifecycle
    cfg = make(models=[{"name": "defects", "bundled": "defects"}], revalidate_interval_s=0,
               **({"lifecycle.min_free_memory_mb": 1 << 30} if why == "no room" else {}))
    source = share(tmp_path / "v110", defects_onnx(tmp_path / "d.onnx", "1.1.0"), "1.1.0")
    policy = {"bake_s": 600, **BEFORE_AND_BAKE}
    manifest_for(manifest, source, **(policy if why == "no room" else {}))
    client = await client_factory(cfg)
    old = client.server.app[keys.SERVICE].models["defects"].active
    assert old is not None
    caplog.set_level(logging.WARNING, logger="agent.models.sync")
    report = await sync(client)
    assert report.startswith("swapped to 1.1.0"), report
    assert "shadowed before the swap" not in report
    no_room = [r for r in caplog.records if r.getMessage().startswith("no room for two")]
    assert len(no_room) == (1 if why == "no room" else 0)
    with pytest.raises(DrainingError):  # the old version was unloaded at once
        old.batcher.reserve()
    for frame in frames(WITH_0_AND_3)[:4]:
        assert (await detect(client, frame)).status == 200
    await assert_one_version(client, "1.1.0")


async def test_tensor_model_shadow_compares_the_argmax_and_rolls_back_a_wrong_version(
    lifecycle, versions, client_factory
):
    """The bundled fusion model swapped to a version whose classes are rotated, with a gate
    that lets it in: the shadow (the bundled version) disagrees on every row."""
    manifest, make = lifecycle
    entry = {"stable": {"source": versions["broken"]}, "min_score": 0.0, "max_drop": 1.0,
             "bake_s": 120, "min_agreement": 0.9, "min_samples": 3,
             "shadow": {"percent": 100, "max_per_s": 20}}
    manifest.write_text(json.dumps({"models": {"fusion": entry}}))
    client = await client_factory(make(revalidate_interval_s=0))
    report = (await (await client.post("/v1/admin/sync", headers=AUTH)).json())["report"]
    # (the start-up sync, waiting for the first, may have run this one already)
    assert report["fusion"].split(" (")[0] in ("swapped to 9.9.9", "running 9.9.9"), report
    sample = (FUSION.folder / "sample-request.json").read_bytes()

    async def rolled_back() -> bool:
        assert (await client.post("/v2/models/fusion/infer", data=sample)).status == 200
        return "rollbacks" in (await models(client))["fusion"]

    await wait_for(rolled_back, "the rollback")
    fusion = (await models(client))["fusion"]
    print(f"fusion rolled back: {fusion['last_rollback']}")
    assert fusion["version"] == FUSION.sidecar["version"]
    assert fusion["last_rollback"]["version"] == "9.9.9"
    assert fusion["last_rollback"]["agreement"] < 0.5


async def test_a_newer_swap_ends_the_bake_and_a_shutdown_during_one_drains_both(
    lifecycle, tmp_path, client_factory
):
    manifest, make = lifecycle
    root = tmp_path / "share"
    sources = {v: publish(root / v, fusion_model(v), v) for v in ("1.0.1", "1.0.2")}
    bake = {"min_score": 0.9, "max_drop": 0.02, "bake_s": 600, "min_agreement": 0.9,
            "shadow": {"percent": 100, "max_per_s": 20}}
    client = await client_factory(make())
    service = client.server.app[keys.SERVICE]
    shadows = []
    for version, previous in (("1.0.1", FUSION.sidecar["version"]), ("1.0.2", "1.0.1")):
        entry = {"stable": {"source": sources[version]}, **bake}
        manifest.write_text(json.dumps({"models": {"fusion": entry}}))
        report = (await (await client.post("/v1/admin/sync", headers=AUTH)).json())["report"]
        # (the start-up sync, waiting for the first, may have run this one already)
        assert report["fusion"].split(" (")[0] in (f"swapped to {version}",
                                                   f"running {version}"), report
        fusion = (await models(client))["fusion"]
        assert fusion["version"] == version
        assert fusion["shadow"]["version"] == previous  # one second version, never two
        shadows.append(service.shadows["fusion"].record.batcher)
    with pytest.raises(DrainingError):  # the first bake's previous version was unloaded
        shadows[0].reserve()
    sample = (FUSION.folder / "sample-request.json").read_bytes()
    assert (await client.post("/v2/models/fusion/infer", data=sample)).status == 200
    shadows[1].reserve().release()  # still loaded
    await client.close()  # shutdown during the bake: the shadow drains too
    assert service.shadows == {}
    assert service.clean_shutdown
    with pytest.raises(DrainingError):
        shadows[1].reserve()
