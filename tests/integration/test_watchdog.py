"""sd_notify from the real daemon process to a real AF_UNIX datagram socket (what systemd reads).

The wedges are made by launchers that run the real daemon with one thing broken, because a
wedged GPU context cannot be produced on this CPU machine: a session run that hangs (and later
recovers), and a request handler that blocks the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import statistics
import struct
import threading
import time
from pathlib import Path

import aiohttp
import pytest
from support import TINY_MODEL, Daemon, FifoReader, image_bytes

PERIOD_S = 0.5  # WATCHDOG_USEC = 1 s: a ping every 0.5 s


class NotifyReceiver(threading.Thread):
    """systemd's side of sd_notify: a datagram socket that records (time, sender pid, line)."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, int, str]] = []
        self._done = threading.Event()

    def run(self) -> None:
        creds_size = struct.calcsize("3i")
        while not self._done.is_set():
            try:
                data, ancdata, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(creds_size))
            except TimeoutError:
                continue
            pid = -1
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[:creds_size])[0]
            now = time.monotonic()
            for line in data.decode().splitlines():
                self.messages.append((now, pid, line))

    def close(self) -> None:
        self._done.set()
        self.join(2)
        self.sock.close()

    def times(self, line: str) -> list[float]:
        return [t for t, _, text in self.messages if text == line]

    def first(self, prefix: str) -> float | None:
        return next((t for t, _, text in self.messages if text.startswith(prefix)), None)


@pytest.fixture
def notify(tmp_path: Path):
    receiver = NotifyReceiver(tmp_path / "notify.sock")
    receiver.start()
    yield receiver
    receiver.close()


def start(tmp_path: Path, notify: NotifyReceiver, env: dict[str, str] | None = None,
          program: tuple[str, ...] = ("-m", "agent")) -> Daemon:
    return Daemon(
        ["--state-dir", str(tmp_path / "state"), "--model", f"tiny={TINY_MODEL}",
         "--max-batch", "1"],
        env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": str(int(PERIOD_S * 2e6)),
             **(env or {})},
        program=program,
    )


async def wait_until(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_ready_status_pings_and_stopping_in_order(tmp_path, notify):
    d = start(tmp_path, notify)
    try:
        await d.wait_ready()
        await wait_until(lambda: notify.first("READY=1") is not None, 5, "READY=1")
        async with aiohttp.ClientSession() as http, http.get(d.url + "/health") as resp:
            assert resp.status == 200
        await asyncio.sleep(6 * PERIOD_S)
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
    finally:
        d.stop()
    lines = [text for _, _, text in notify.messages]
    assert {pid for _, pid, _ in notify.messages} == {d.proc.pid}  # NotifyAccess=main holds
    ready_at = notify.first("READY=1")
    extend_at = notify.first("EXTEND_TIMEOUT_USEC=")
    assert extend_at is not None
    assert ready_at is not None
    assert extend_at < ready_at  # the start timeout is extended while models load
    assert lines.count("READY=1") == 1
    statuses = [text for text in lines if text.startswith("STATUS=")]
    assert statuses[0] in ("STATUS=starting", "STATUS=loading: tiny pending",
                           "STATUS=loading: tiny loading")
    assert "STATUS=serving tiny" in statuses
    assert "STOPPING=1" in lines
    stopping_at = notify.first("STOPPING=1")
    assert stopping_at is not None
    assert stopping_at > ready_at
    pings = [t for t in notify.times("WATCHDOG=1") if t > ready_at]
    assert len(pings) >= 5
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    # Every half WATCHDOG_USEC, not every whole one; loose bounds, as a busy machine delays a
    # tick now and then (the watchdog's own margin is the other half period).
    assert abs(statistics.median(gaps) - PERIOD_S) < PERIOD_S / 2, gaps
    assert max(gaps) < 4 * PERIOD_S, gaps


# Every session run hangs while the flag file exists (a GPU that wedges, then comes back). The
# first run to hang writes when it did (time.monotonic() is CLOCK_MONOTONIC: one clock for the
# daemon and the test), so the bounds below start from the wedge itself, not from the flag.
WEDGE_WHILE_FLAGGED = """
import os, sys, time
from inference.yolo import YoloV8Detector
real_infer = YoloV8Detector.infer
flag = os.environ["WEDGE_FLAG"]
def wedged_infer(self, blobs):
    if os.path.exists(flag) and not os.path.exists(flag + ".entered"):
        with open(flag + ".entered", "w") as f:
            f.write(repr(time.monotonic()))
    while os.path.exists(flag):
        time.sleep(0.02)
    return real_infer(self, blobs)
YoloV8Detector.infer = wedged_infer
from agent.cli import main
sys.exit(main())
"""


async def test_a_wedged_inference_stops_the_pings_within_one_period_and_recovery_resumes(
    tmp_path, notify
):
    env = {
        "EDGE_AGENT_HEALTH__MAX_INFERENCE_S": "1",
        "EDGE_AGENT_HEALTH__SELFTEST_INTERVAL_S": "0.5",
        "EDGE_AGENT_HEALTH__MAX_SILENCE_S": "3",
    }
    flag = tmp_path / "wedged"
    env["WEDGE_FLAG"] = str(flag)
    d = start(tmp_path, notify, env, program=("-c", WEDGE_WHILE_FLAGGED))
    try:
        await d.wait_ready()
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(1.0)
            flag.touch()
            # No request needed: the self-test (every 0.5 s when idle) runs into the wedge.
            entered = flag.with_name(flag.name + ".entered")
            await wait_until(lambda: entered.exists() and entered.read_text(), 60, "the wedge")
            wedged_at = float(entered.read_text())
            end = time.monotonic() + 60
            while True:
                async with http.get(d.url + "/livez") as resp:
                    if resp.status == 503:
                        reasons = " ".join((await resp.json())["reasons"])
                        break
                assert time.monotonic() < end, "livez never turned 503"
                await asyncio.sleep(0.1)
            assert "inference running" in reasons
            # A few more periods wedged: no ping may come in them.
            await asyncio.sleep(4 * PERIOD_S)
            flag.unlink()
            recovered_at = time.monotonic()
            async with http.post(
                d.url + "/v1/models/tiny/detect", data=image_bytes("coffee-600x400.jpg"),
                headers={"Content-Type": "image/jpeg"},
            ) as resp:
                assert resp.status == 200
            await asyncio.sleep(4 * PERIOD_S)
            async with http.get(d.url + "/livez") as resp:
                assert resp.status == 200
    finally:
        d.stop()
    pings = notify.times("WATCHDOG=1")
    # The run is "stuck" max_inference_s (1 s) after it began; the pings stop at most one
    # period later (+ 0.3 s for a ping sent in time but read late by this busy test process).
    bound = 1.0 + PERIOD_S + 0.3
    before = [t for t in pings if t < wedged_at]
    during = [t for t in pings if wedged_at + bound < t < recovered_at]
    after = [t for t in pings if t > recovered_at]
    assert before, "no pings before the wedge"
    assert during == [], [round(t - wedged_at, 2) for t in during]
    last_ping = max(t for t in pings if t < recovered_at)
    print(f"wedge -> last ping: {last_ping - wedged_at:.2f} s (bound {bound:.2f} s)")
    assert last_ping - wedged_at <= bound
    assert len(after) >= 2, "pings did not resume after recovery"


# GET /v1/models blocks the event loop for 2 s (as a CPU-bound call on the loop would), and
# writes when the block began and ended (CLOCK_MONOTONIC, the test's clock too).
BLOCKING_LOOP = """
import os, sys, time
from agent.http import handlers
real = handlers.list_models
async def blocking(request):
    began = time.monotonic()
    time.sleep(2.0)
    with open(os.environ["BLOCK_LOG"], "w") as f:
        f.write(f"{began!r} {time.monotonic()!r}")
    return await real(request)
handlers.list_models = blocking
from agent.cli import main
sys.exit(main())
"""


async def test_a_blocked_event_loop_sends_no_ping_and_no_answer_until_it_turns_again(
    tmp_path, notify
):
    log = tmp_path / "blocked"
    d = start(tmp_path, notify, {"BLOCK_LOG": str(log)}, program=("-c", BLOCKING_LOOP))
    try:
        await d.wait_ready()
        async with aiohttp.ClientSession() as http:
            await asyncio.sleep(1.0)
            blocker = asyncio.create_task(http.get(d.url + "/v1/models"))
            await asyncio.sleep(0.3)
            # The kubelet's view: /livez does not answer while the loop is blocked.
            with pytest.raises(asyncio.TimeoutError):
                async with http.get(d.url + "/livez", timeout=aiohttp.ClientTimeout(total=1)):
                    pass
            await blocker
            await asyncio.sleep(4 * PERIOD_S)
    finally:
        d.stop()
    began, ended = map(float, log.read_text().split())
    pings = notify.times("WATCHDOG=1")
    # +0.3 s: a ping sent just before the block but read late by this busy test process.
    during = [round(t - began, 2) for t in pings if began + 0.3 < t < ended]
    assert during == []
    last_before = max(t for t in pings if t <= began + 0.3)
    assert began - last_before <= 2 * PERIOD_S  # it was pinging until the block
    assert [t for t in pings if t > ended], "pings did not resume"


async def test_the_daemon_feeds_a_watchdog_device_and_disarms_it_only_on_a_clean_exit(
    tmp_path, notify
):
    reader = FifoReader(tmp_path / "watchdog")
    fifo = reader.path
    d = start(tmp_path, notify, {"EDGE_AGENT_WATCHDOG__DEVICE": str(fifo),
                                 "EDGE_AGENT_WATCHDOG__TIMEOUT_S": "10"})
    try:
        await d.wait_ready()
        await asyncio.sleep(4 * PERIOD_S)
        d.signal(signal.SIGTERM)
        assert d.wait(30) == 0
    finally:
        d.stop()
    reader.join(5)
    got = reader.data
    assert len(got) >= 4
    assert got[:-1] == b"k" * (len(got) - 1)
    assert got[-1:] == b"V"


def test_a_watchdog_device_that_cannot_be_opened_stops_start_up_with_a_clear_error(
    tmp_path, notify
):
    d = start(tmp_path, notify, {"EDGE_AGENT_WATCHDOG__DEVICE": str(tmp_path / "nope")})
    try:
        assert d.wait(30) == 1
    finally:
        d.stop()
    assert "cannot open the hardware watchdog" in d.output
