"""Running the app: ``web.run_app``'s lifecycle on a runner whose connections answer JSON even
for a request aiohttp cannot parse.

aiohttp answers a malformed request (a bad or doubled ``Content-Length``, ``Transfer-Encoding``
with ``Content-Length``, a bad chunk size, an oversized header) itself, in text/plain, before
any middleware runs, and offers no hook for it (aio-libs/aiohttp#3287). Every answer of this
daemon has one shape, so the per-connection handler is subclassed here and used through
``AppRunner``'s server factory; the rest is ``web.run_app`` as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_runner import GracefulExit

from agent.http.errors import error_response

log = logging.getLogger(__name__)

MAX_MESSAGE = 200  # aiohttp's parser messages can quote the offending bytes


class _JsonErrorRequestHandler(RequestHandler):
    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own handling first: it logs, and raises if a response already started.
        super().handle_error(request, status, exc, message)
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "error"
        # The parser's message: "Invalid character in chunk size:" then the bytes it saw.
        lines = (message or "").strip().splitlines() if status < 500 else []
        error = lines[0].rstrip(": ")[:MAX_MESSAGE] if lines else phrase
        detail = " ".join(ln.strip() for ln in lines[1:] if ln.strip())[:MAX_MESSAGE] or None
        resp = error_response(status, error or phrase, detail)
        resp.force_close()
        return resp


class _JsonErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorAppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # Same server, same state: only the per-connection handler class differs.
        server.__class__ = _JsonErrorServer
        return server


async def _serve(runner: web.AppRunner, host: str, port: int) -> None:
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        await asyncio.Event().wait()  # until GracefulExit (the signal handler) ends the loop
    finally:
        await runner.cleanup()


def run_app(app: web.Application, *, host: str, port: int, **kwargs: Any) -> None:
    """``web.run_app(app, host=, port=, handle_signals=False, **kwargs)`` with JSON errors:
    the same loop set-up, cleanup on :class:`GracefulExit`, and cancellation of what is left."""
    loop = asyncio.new_event_loop()
    runner = JsonErrorAppRunner(app, handle_signals=False, **kwargs)
    main = loop.create_task(_serve(runner, host, port))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        try:
            if not main.done():
                main.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    loop.run_until_complete(main)
        finally:
            rest = asyncio.all_tasks(loop)
            for task in rest:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            for task in rest:
                if not task.cancelled() and task.exception() is not None:
                    log.error("task failed at shutdown", exc_info=task.exception())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
