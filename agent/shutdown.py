"""Graceful shutdown: on SIGTERM/SIGINT readiness turns 503 at once, the daemon keeps serving
for ``drain_grace_s`` (so K3s and load balancers stop routing to it), then stops listening and
lets in-flight and queued requests finish (the runner's shutdown timeout). A second signal skips
the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.web_runner import GracefulExit

log = logging.getLogger(__name__)


class Shutdown:
    """Where the graceful stop is: draining (readiness 503), then stopped (no new work)."""

    def __init__(self) -> None:
        self.draining = False  # readiness is 503
        self.stopped = False  # no new work is taken

    def begin_drain(self, reason: str) -> None:
        if not self.draining:
            log.info("draining", extra={"reason": reason})
        self.draining = True


def _reset_signals_in_child() -> None:
    """In a child forked from the daemon (a library's ``multiprocessing`` fork: OpenVINO's
    telemetry sends from one and SIGTERMs it after 3 s) the loop's signal wakeup fd is shared
    with the daemon: a signal the child got would be written there and read by the daemon's
    loop as its own SIGTERM (Python < 3.12 does not reset it). The child gets its own default
    handlers back."""
    with contextlib.suppress(ValueError):  # not the child's main thread: nothing to undo
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)


_at_fork_registered = False


def signal_ctx(shutdown: Shutdown, grace_s: float):  # noqa: ANN201 (aiohttp cleanup_ctx)
    """A ``cleanup_ctx`` entry that installs the SIGTERM/SIGINT handlers (the runner
    leaves signals alone)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            shutdown.stopped = True
            raise GracefulExit  # SystemExit: propagates out of the loop into run_app

        def on_signal(signame: str) -> None:
            if shutdown.draining:
                stop()
            shutdown.begin_drain(signame)
            loop.call_later(grace_s, stop)

        global _at_fork_registered
        if not _at_fork_registered:
            os.register_at_fork(after_in_child=_reset_signals_in_child)
            _at_fork_registered = True
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)
        yield
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    return ctx
