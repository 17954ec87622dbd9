"""The daemon as users run it: a real `python -m agent serve` process on a real port."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import aiohttp
import pytest
from support import Daemon, assert_parity, image_bytes, shed_for_load

from agent import __version__
from inference.bundled import BUNDLE_ROOT

JPEG = {"Content-Type": "image/jpeg"}


@pytest.fixture
def daemon_factory(tmp_path):
    started: list[Daemon] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Daemon:
        d = Daemon(["--state-dir", str(tmp_path / "state"), *args], env=env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


async def post_image(
    http: aiohttp.ClientSession, url: str, name: str, query: str = ""
) -> tuple[int, dict, float, dict]:
    start = time.monotonic()
    async with http.post(f"{url}{query}", data=image_bytes(name), headers=JPEG) as resp:
        body = await resp.json()
        return resp.status, body, time.monotonic() - start, dict(resp.headers)


async def test_readiness_is_503_until_loaded_and_warm_then_200(daemon_factory, fall_model):
    d = daemon_factory("--model", f"fall={fall_model}", env={"EDGE_AGENT_BATCHING__INSTANCES": "2"})
    seen = await d.wait_ready()
    assert 503 in seen, f"never saw the not-ready state: {seen}"
    assert seen[-1] == 200
    async with aiohttp.ClientSession() as http, http.get(d.url + "/v1/models") as resp:
        (model,) = (await resp.json())["models"]
    assert model["state"] == "ready"
    assert model["provider"] == "cpu"


async def test_eight_concurrent_clients_each_get_their_own_answer(daemon_factory, fall_model):
    d = daemon_factory("--model", f"fall={fall_model}")
    await d.wait_ready()
    url = d.url + "/v1/models/fall/detect"
    requests = [
        ("astronaut-1080p.jpg", ""),
        ("astronaut-exif6.jpg", ""),
        ("camera-gray.png", ""),
        ("chelsea-rgba.png", ""),
        ("coffee-600x400.jpg", ""),
        ("rocket-16bit.png", ""),
        ("astronaut-1080p.jpg", "?conf=0.05"),
        ("camera-gray.png", "?conf=0.9"),
    ]
    async with aiohttp.ClientSession() as http:
        alone = [await post_image(http, url, n, q) for n, q in requests]
        together = await asyncio.gather(*(post_image(http, url, n, q) for n, q in requests))
    for (name, query), a, t in zip(requests, alone, together, strict=True):
        assert a[0] == t[0] == 200
        assert t[1]["image"] == a[1]["image"]
        assert_parity(a[1]["detections"], t[1]["detections"], f"{name}{query}")
        assert len(t[1]["detections"]) == len(a[1]["detections"])
    assert {len(t[1]["detections"]) for t in together} != {0}


async def test_a_full_queue_answers_503_at_once(daemon_factory, fall_model):
    d = daemon_factory("--model", f"fall={fall_model}", "--max-queue", "1", "--max-batch", "1")
    await d.wait_ready()
    url = d.url + "/v1/models/fall/detect"
    async with aiohttp.ClientSession() as http:
        results = await asyncio.gather(
            *(post_image(http, url, "coffee-600x400.jpg") for _ in range(12))
        )
    ok = [r for r in results if r[0] == 200]
    shed = [r for r in results if r[0] == 503]
    assert ok
    assert shed
    assert len(ok) + len(shed) == 12
    assert all(r[3]["Retry-After"] == "1" for r in shed)
    assert all(shed_for_load(r[1]["error"]) for r in shed)
    # Shed before any work: each refusal comes back sooner than any served frame.
    assert max(r[2] for r in shed) < min(r[2] for r in ok)


async def test_sigterm_with_requests_in_flight_loses_none(daemon_factory, fall_model):
    d = daemon_factory("--model", f"fall={fall_model}", "--max-batch", "1")
    await d.wait_ready()
    url = d.url + "/v1/models/fall/detect"
    async with aiohttp.ClientSession() as http:
        tasks = [asyncio.create_task(post_image(http, url, "coffee-600x400.jpg")) for _ in range(6)]
        # All six admitted (one runs at a time, the rest wait in the queue) before the signal: a
        # connection not yet accepted when the listener closes is the balancer's to retry.
        admitted = 0
        end = time.monotonic() + 60
        while admitted < 5:
            assert time.monotonic() < end, f"only {admitted} of 6 admitted"
            async with http.get(d.url + "/v1/models") as resp:
                (model,) = (await resp.json())["models"]
            admitted = model["queue_depth"] + sum(t.done() for t in tasks)
            await asyncio.sleep(0.01)
        d.signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks)
    assert [r[0] for r in results] == [200] * 6
    assert d.wait(timeout=60) == 0
    messages = [json.loads(line)["msg"] for line in d.output.splitlines() if line.startswith("{")]
    assert "draining" in messages
    assert messages[-1] == "stopped"


async def test_drain_grace_keeps_serving_with_readiness_503(daemon_factory, fall_model):
    d = daemon_factory("--model", f"fall={fall_model}", env={"EDGE_AGENT_DRAIN_GRACE_S": "2"})
    await d.wait_ready()
    d.signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession() as http:
        async with http.get(d.url + "/health") as resp:
            assert resp.status == 503
            assert (await resp.json())["status"] == "draining"
        async with http.get(d.url + "/v2/health/ready") as resp:
            assert resp.status == 503
        status, _, _, _ = await post_image(
            http, d.url + "/v1/models/fall/detect", "camera-gray.png"
        )
        assert status == 200
    assert d.wait(timeout=30) == 0


def served_name(fixture: str) -> str:
    """The reference's model names are longer than a served model's name may be (16
    characters: the fleet summary's size is bounded by them): served under their last part."""
    return fixture if len(fixture) <= 16 else fixture.split("-", 1)[1]


async def test_parity_with_ultralytics_through_http(daemon_factory, model_paths, reference):
    args = [a for key, path in model_paths.items()
            for a in ("--model", f"{served_name(key)}={path}")]
    d = daemon_factory(*args)
    await d.wait_ready()
    async with aiohttp.ClientSession() as http:
        for case in reference["cases"]:
            query = f"?conf={case['conf']}&iou={case['iou']}&max_det={case['max_det']}"
            ctype = "image/png" if case["image"].endswith(".png") else "image/jpeg"
            async with http.post(
                f"{d.url}/v1/models/{served_name(case['model'])}/detect{query}",
                data=image_bytes(case["image"]),
                headers={"Content-Type": ctype},
            ) as resp:
                assert resp.status == 200
                body = await resp.json()
            assert_parity(
                case["detections"], body["detections"], f"HTTP {case['model']} on {case['image']}"
            )


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
    )


def test_version():
    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"edge-agent {__version__}"


def test_a_bad_setting_stops_startup_naming_the_key(tmp_path):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("batching:\n  max_qeue: 3\n")
    proc = run_cli("serve", "--config", str(cfg))
    assert proc.returncode == 2
    assert "batching.max_qeue" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("port: 8080\nbatching:\n  max_queue: [1,\n", "line 4, column 1"),
        ("port: 8080\n  bad: 1\n", "line 2, column 6"),
        ("port: 8080\nhost:\t0.0.0.0\n", "line 2, column 6"),
        ("port: 8080\nport: 9090\n", "line 2, column 1"),
        ("port: \xff\n", "line 1"),
        ("[" * 5000 + "]" * 5000 + "\n", "nested"),
    ],
)
def test_a_broken_config_file_exits_2_naming_file_line_and_column(tmp_path, text, where):
    cfg = tmp_path / "agent.yaml"
    cfg.write_bytes(text.encode("latin-1"))
    proc = run_cli("serve", "--config", str(cfg))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"edge-agent: configuration error: config file {cfg}")
    assert where in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_a_model_that_failed_to_load_says_failed_and_why(daemon_factory, tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx graph at all")
    d = daemon_factory("--model", f"cam={broken}")
    async with aiohttp.ClientSession() as http:
        health: dict = {"status": "loading"}
        for _ in range(600):
            try:
                async with http.get(d.url + "/health") as resp:
                    health = await resp.json()
            except aiohttp.ClientConnectionError:
                pass  # not listening yet
            if health["status"] != "loading":
                break
            await asyncio.sleep(0.05)
        assert resp.status == 503
        assert health["status"] == "failed", health
        assert "cam" in health["errors"]
        assert health["waiting_for"] == {"cam": "failed"}
        for path, ctype in (("/v1/models/cam/detect", "image/jpeg"),
                            ("/v2/models/cam/infer", "application/json")):
            async with http.post(d.url + path, data=b"{}", headers={"Content-Type": ctype}) as r:
                body = await r.json()
                assert r.status == 503, body
                assert body["error"].startswith("model 'cam' failed to load"), body
                assert "use POST" not in body["error"]


async def test_a_tensor_model_given_as_name_path_is_served_as_a_tensor_model(daemon_factory):
    fusion = BUNDLE_ROOT / "fusion"
    d = daemon_factory("--model", f"motor={fusion / 'model.onnx'}")
    await d.wait_ready()
    sample = json.loads((fusion / "sample-request.json").read_text())
    async with aiohttp.ClientSession() as http:
        async with http.get(d.url + "/v1/models") as resp:
            (model,) = (await resp.json())["models"]
        assert (model["name"], model["kind"]) == ("motor", "tensor")
        async with http.post(d.url + "/v2/models/motor/infer", json=sample) as resp:
            assert resp.status == 200, await resp.text()
            outputs = {o["name"]: o for o in (await resp.json())["outputs"]}
        assert outputs["state_probs"]["shape"] == [1, 5]
        async with http.post(d.url + "/v1/models/motor/detect", data=image_bytes(
                "coffee-600x400.jpg"), headers=JPEG) as resp:
            assert resp.status == 400
            assert "use POST /v2/models/motor/infer" in (await resp.json())["error"]


async def test_port_in_use_is_a_clear_error(daemon_factory, tmp_path):
    d = daemon_factory()
    await d.wait_ready()  # no models: ready at once
    proc = run_cli(
        "serve", "--host", "127.0.0.1", "--port", str(d.port), "--state-dir", str(tmp_path / "s2")
    )
    assert proc.returncode == 1
    assert "cannot listen" in proc.stderr
    assert "Traceback" not in proc.stderr


# A wedged session (a GPU context that never answers, Triton issue 3627) cannot be produced on
# this CPU machine: this launcher runs the real daemon with session runs after warm-up blocked.
WEDGED_DAEMON = """
import sys, threading
from inference.yolo import YoloV8Detector
real_infer = YoloV8Detector.infer
runs = []
def wedged_infer(self, blobs):
    runs.append(len(blobs))
    if len(runs) > 1:  # the warm-up run passes; every request's run hangs
        threading.Event().wait()
    return real_infer(self, blobs)
YoloV8Detector.infer = wedged_infer
from agent.cli import main
sys.exit(main())
"""


async def test_a_wedged_inference_turns_livez_503_and_shutdown_still_exits(tmp_path):
    from support import TINY_MODEL

    d = Daemon(
        ["--state-dir", str(tmp_path / "s"), "--model", f"tiny={TINY_MODEL}", "--max-batch", "1"],
        env={"EDGE_AGENT_HEALTH__MAX_INFERENCE_S": "0.5", "EDGE_AGENT_DRAIN_TIMEOUT_S": "1"},
        program=("-c", WEDGED_DAEMON),
    )
    try:
        await d.wait_ready()
        async with aiohttp.ClientSession() as http:
            stuck = asyncio.create_task(
                post_image(http, d.url + "/v1/models/tiny/detect", "coffee-600x400.jpg")
            )
            end = time.monotonic() + 60
            while True:  # the run hangs; 0.5 s after it started, liveness says so
                async with http.get(d.url + "/livez") as resp:
                    if resp.status == 503:
                        body = await resp.json()
                        break
                assert time.monotonic() < end, "livez never turned 503"
                await asyncio.sleep(0.1)
            assert "inference running" in body["reasons"][0]
            async with http.get(d.url + "/health") as resp:
                assert resp.status == 200  # still ready: liveness, not readiness, restarts it
            d.signal(signal.SIGTERM)
            start = time.monotonic()
            assert d.wait(timeout=30) == 1
            assert time.monotonic() - start < 15
            with pytest.raises(aiohttp.ClientError):
                await stuck
        assert "stopped with inference still running" in d.output
    finally:
        d.stop()
