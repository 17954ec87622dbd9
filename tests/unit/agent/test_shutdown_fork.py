"""A child forked from the daemon's process and sent SIGTERM (OpenVINO's telemetry does this
on ``import openvino``: it sends from a ``multiprocessing`` fork and terminates it after 3 s when
the network is slow) must not stop the daemon: before Python 3.12 the child shares the loop's
signal wakeup fd, and its SIGTERM read there looked like the daemon's own. Run in a fresh
interpreter: the real signal handlers, a real fork, a real SIGTERM.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

SCRIPT = """
import asyncio, json, multiprocessing, time
from aiohttp import web
from agent.shutdown import Shutdown, signal_ctx

def fork_and_terminate():
    child = multiprocessing.get_context("fork").Process(target=time.sleep, args=(60,))
    child.start()
    time.sleep(0.5)
    child.terminate()
    child.join(30)
    return child.exitcode

async def main():
    shutdown = Shutdown()
    ctx = signal_ctx(shutdown, 30)(web.Application())
    await ctx.__anext__()
    code = await asyncio.to_thread(fork_and_terminate)  # forked from a thread, as a library does
    await asyncio.sleep(0.5)  # a byte in the wakeup fd would have been handled by now
    print(json.dumps({"draining": shutdown.draining, "child_exit": code}))

asyncio.run(main())
"""


def test_a_forked_child_terminated_does_not_stop_the_daemon() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["draining"] is False
    assert result["child_exit"] == -15  # the child's own SIGTERM default: it ended
