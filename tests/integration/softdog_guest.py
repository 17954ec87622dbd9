"""Runs inside the qemu guest (see test_softdog.py): starts the real daemon
(``python -m agent serve``) feeding the guest's real softdog, drives it over the guest's own
loopback, and prints ``EDGE ...`` markers on the serial console for the host test to parse.
The daemon's own log lines (JSON) go to the console too.

Standard library only: this process must not slow the guest down with imports of its own.

Usage: python softdog_guest.py wedge|stop CONFIG TIMEOUT_S

Each step waits for a state, with a generous limit (software emulation is slow, and slower
still on a loaded host); a limit that runs out prints ``EDGE gave up waiting for ...``.

- ``wedge``: once the daemon is ready and has kept the guest up for longer than the timeout,
  send one request whose run never finishes; print the daemon's ``/livez`` once it turns 503,
  then wait for the softdog to reboot the guest (qemu exits) with the daemon still running.
  ``EDGE still up`` means it did not reboot, ``EDGE daemon exited`` that the daemon died.
- ``stop``: once ready and up for longer than the timeout, SIGTERM; print the exit status and
  the watchdog's state, then stay up for the timeout plus a margin and print ``EDGE survived``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

BASE = "http://127.0.0.1:8080"
SYSFS = Path("/sys/class/watchdog/watchdog0")
WEDGE_TRIPS = 2**62  # loop iterations: about a microsecond each natively, so never in practice
MARGIN_S = 4.0


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def mark(text: str) -> None:
    print(f"EDGE {text} at={uptime():.2f}", flush=True)


def watchdog_state() -> str:
    try:
        return (SYSFS / "state").read_text().strip()
    except OSError as exc:
        return f"unreadable({exc.strerror})"


def request(path: str, body: dict[str, Any] | None = None,
            timeout: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(BASE + path, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:  # an answer all the same: 503 and its reasons
        with exc:
            text = exc.read()
        try:
            return exc.code, json.loads(text)
        except ValueError:
            return exc.code, text.decode(errors="replace")
    except (OSError, ValueError) as exc:  # not listening yet, reset, timed out
        return 0, repr(exc)


def wait_for(daemon: subprocess.Popen[bytes], what: str, ok: Callable[[], bool],
             limit_s: float) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if ok():
            return True
        if daemon.poll() is not None:
            mark(f"daemon exited rc={daemon.returncode} while waiting for {what}")
            return False
        time.sleep(0.2)
    mark(f"gave up waiting for {what}")
    return False


def ready_and_fed(daemon: subprocess.Popen[bytes], timeout_s: int) -> bool:
    """Ready, then still up and live for longer than the timeout: it is feeding the dog."""
    if not wait_for(daemon, "/health 200", lambda: request("/health", timeout=5)[0] == 200,
                    450):  # imports under emulation on a busy host: minutes
        return False
    mark(f"ready watchdog={watchdog_state()}")
    end = time.monotonic() + timeout_s + MARGIN_S
    while time.monotonic() < end:
        status, body = request("/livez", timeout=5)
        if status != 200 or daemon.poll() is not None:
            mark(f"unhealthy before the test began: {status} {body}")
            return False
        time.sleep(0.5)
    mark(f"fed for={timeout_s + MARGIN_S:.0f}s livez=200 watchdog={watchdog_state()}")
    return True


def wedge(daemon: subprocess.Popen[bytes], timeout_s: int) -> None:
    def send() -> None:
        body = {"inputs": [{"name": "n", "shape": [1], "datatype": "INT64",
                            "data": [WEDGE_TRIPS]}]}
        status, answer = request("/v2/models/spin/infer", body, timeout=3600)
        mark(f"wedge answered status={status} body={answer}")

    threading.Thread(target=send, daemon=True).start()
    mark("wedge sent")
    seen: list[Any] = []

    def not_live() -> bool:
        status, body = request("/livez", timeout=5)
        seen[:] = [body]
        return status == 503

    if not wait_for(daemon, "/livez 503", not_live, 120):
        return
    mark(f"not live livez={json.dumps(seen[0])} watchdog={watchdog_state()}")
    # Nothing feeds the dog now: it reboots the guest (qemu exits) well before this ends. The
    # daemon must still be running then: a daemon that died would have let the dog fire too.
    try:
        rc = daemon.wait(10 * timeout_s)
    except subprocess.TimeoutExpired:
        mark(f"still up watchdog={watchdog_state()}")
    else:
        mark(f"daemon exited rc={rc} while wedged")


def stop(daemon: subprocess.Popen[bytes], timeout_s: int) -> None:
    daemon.send_signal(signal.SIGTERM)
    mark("sigterm sent")
    try:
        rc = daemon.wait(120)
    except subprocess.TimeoutExpired:
        mark("gave up waiting for the daemon to exit")
        return
    mark(f"daemon exited rc={rc} watchdog={watchdog_state()}")
    time.sleep(timeout_s + MARGIN_S)  # a watchdog left armed fires in here
    mark(f"survived for={timeout_s + MARGIN_S:.0f}s watchdog={watchdog_state()}")


def main(mode: str, config: str, timeout_s: int) -> None:
    mark(f"driver up mode={mode} watchdog={watchdog_state()}")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "agent", "serve", "--config", config],
        env={**os.environ, "EDGE_AGENT_LOG_FORMAT": "json"},
        stdin=subprocess.DEVNULL,
    )
    try:
        if ready_and_fed(daemon, timeout_s):
            (wedge if mode == "wedge" else stop)(daemon, timeout_s)
    finally:
        if daemon.poll() is None:
            daemon.kill()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
