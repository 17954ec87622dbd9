"""Faults from below: a model run that raises, a full disk under the model cache, a state dir
that is read-only, missing or not a directory. The daemon answers, keeps serving and says what
is wrong in one line. (A model that hangs is test_watchdog.py's wedge test.)"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import cv2
import numpy as np
import onnx
import pytest
from lifecycle_helpers import (
    AUTH,
    FUSION,
    first_sync_done,
    fusion_model,
    models,
    publish,
    samples,
    summary,
    write_manifest,
)
from onnx import TensorProto, helper, numpy_helper
from support import TINY_MODEL, free_port, require


def lookup_model(path: Path) -> Path:
    """``out = table[idx]``: an index outside 0..9 makes ONNX Runtime raise inside the run,
    as a corrupt input or a driver fault would."""
    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(10, 2), "table")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "idx"], ["out"], axis=0)],
        "lookup",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", 1])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 1, 2])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def infer_body(index: int) -> dict:
    return {"inputs": [{"name": "idx", "shape": [1, 1], "datatype": "INT64", "data": [index]}]}


async def test_a_run_that_raises_fails_only_its_own_request_and_is_counted(
    client_factory, settings_factory, tmp_path
):
    settings = settings_factory(**{
        "models": [{"name": "lookup", "path": str(lookup_model(tmp_path / "lookup.onnx")),
                    "kind": "tensor"}],
        # Wait for company, so the poisoned request shares a batch with good ones.
        "batching.max_batch": 8,
        "batching.max_delay_ms": 50,
    })
    client = await client_factory(settings)

    async def infer(index: int) -> tuple[int, dict]:
        resp = await client.post("/v2/models/lookup/infer", json=infer_body(index))
        return resp.status, await resp.json()

    answers = await asyncio.gather(*(infer(i) for i in (1, 2, 99, 3, 4)))
    for (status, body), index in zip(answers, (1, 2, 99, 3, 4), strict=True):
        if index == 99:
            assert status == 500, body
            assert "failed on this input" in body["error"]
        else:
            assert status == 200, body
            assert body["outputs"][0]["data"] == [2.0 * index, 2.0 * index + 1]
    status, body = await infer(5)
    assert status == 200
    assert body["outputs"][0]["data"] == [10.0, 11.0]
    got = samples(await (await client.get("/metrics")).text())  # every reason: /metrics
    key = (("model", "lookup"), ("reason", "inference_failed"))
    assert got[("edge_requests_rejected_total", key)] == 1
    five_xx = ("edge_requests_total", (("code", "5xx"), ("model", "lookup")))
    assert (await summary(client))[five_xx] == 1
    assert (await client.get("/livez")).status == 200
    assert (await client.get("/health")).status == 200


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs: a disk that fills up (needs root to mount; CI runs as root)."""
    require(os.geteuid() == 0 and bool(shutil.which("mount")), "root and mount(8)")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave_bytes: int) -> Path:
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_bytes))
    return filler


async def test_a_full_disk_while_caching_a_version_keeps_the_old_cache_and_says_why(
    lifecycle, versions, client_factory, small_disk, tmp_path
):
    manifest, make = lifecycle
    write_manifest(manifest, versions["bundled"])
    settings = make(state_dir=small_disk / "state")
    client = await client_factory(settings)
    await first_sync_done(client)  # else it, not the test's sync, might swap 1.0.1 in
    write_manifest(manifest, versions["1.0.1"])
    report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
    assert report["report"]["fusion"].startswith("swapped to 1.0.1"), report
    state_file = settings.state_dir / "models" / "state.json"
    blobs = settings.state_dir / "models" / "blobs" / "sha256"
    state_before = state_file.read_bytes()
    (blob_before,) = blobs.iterdir()
    digest_before = hashlib.sha256(blob_before.read_bytes()).hexdigest()

    filler = fill(small_disk, leave_bytes=64 * 1024)  # the new version is 198 KB
    write_manifest(manifest, publish(tmp_path / "v103", fusion_model("1.0.3"), "1.0.3"))
    report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
    assert report["report"]["fusion"] == (
        "refused: cannot write to the model cache: No space left on device"
    ), report
    assert state_file.read_bytes() == state_before
    assert list(blobs.iterdir()) == [blob_before]  # no half-written blob, no temp file
    assert hashlib.sha256(blob_before.read_bytes()).hexdigest() == digest_before
    assert (await models(client))["fusion"]["version"] == "1.0.1"
    sample = (FUSION.folder / "sample-request.json").read_bytes()
    assert (await client.post("/v2/models/fusion/infer", data=sample)).status == 200

    filler.unlink()  # space again: the next sync takes the update
    report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
    assert report["report"]["fusion"].startswith("swapped to 1.0.3"), report
    assert json.loads(state_file.read_text())["models"]["fusion"][0]["version"] == "1.0.3"


def serve(state_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    return subprocess.run(
        [sys.executable, "-m", "agent", "serve", "--port", "0", "--state-dir", str(state_dir),
         "--model", f"tiny={TINY_MODEL}", "--log-format", "text"],
        env=env, capture_output=True, text=True, timeout=60,
    )


def assert_clear_start_up_error(done: subprocess.CompletedProcess[str], needle: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert needle in done.stderr, output
    assert "Traceback" not in output


def test_a_read_only_state_dir_stops_start_up_with_one_clear_line(tmp_path):
    require(os.geteuid() == 0 and bool(shutil.which("mount")), "root and mount(8)")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mnt)], check=True)
    try:
        done = serve(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert_clear_start_up_error(done, f"state_dir {mnt} is not writable: Read-only file system")


def test_a_missing_state_dir_is_created_and_one_that_cannot_be_is_a_clear_error(tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    done = serve(tmp_path / "a-file" / "state")
    assert_clear_start_up_error(done, "is not writable: Not a directory")
    done = serve(tmp_path / "a-file")
    assert_clear_start_up_error(done, "is not writable: File exists")


def test_a_stderr_nobody_reads_does_not_wedge_the_daemon(tmp_path):
    """Debug logging and a line per request into a pipe that is never read (a stuck journald,
    a full log pipe): the 64 KiB pipe fills within a few hundred requests; the daemon must go on
    answering, dropping log lines rather than blocking its event loop on the write."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    env.update({"EDGE_AGENT_LOG_LEVEL": "debug", "EDGE_AGENT_LOG_REQUESTS": "true"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--state-dir", str(tmp_path / "state"), "--model", f"tiny={TINY_MODEL}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        answered = asyncio.run(_cameras(f"http://127.0.0.1:{port}", cameras=8, frames=200))
        assert answered == 1600
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


async def _cameras(url: str, cameras: int, frames: int) -> int:
    answered = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for _ in range(600):
            try:
                async with http.get(url + "/health") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        frame = cv2.imencode(".jpg", np.zeros((64, 64, 3), np.uint8))[1].tobytes()

        async def camera() -> None:
            nonlocal answered
            for _ in range(frames):  # a "detect" line (~300 B) per frame: ~500 KB in all
                async with http.post(url + "/v1/models/tiny/detect", data=frame,
                                     headers={"Content-Type": "image/jpeg"}) as resp:
                    assert resp.status == 200
                    answered += 1

        await asyncio.gather(*(camera() for _ in range(cameras)))
    return answered
