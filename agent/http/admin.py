"""Admin endpoints: off unless a token is configured; bearer token, compared in constant time."""

from __future__ import annotations

import hmac

from aiohttp import web

from agent.errors import AdminDisabledError, ConflictError, UnauthorizedError
from agent.http import keys
from agent.strict_json import json_response


def _authorize(request: web.Request) -> None:
    token = request.app[keys.SETTINGS].admin.token()
    if not token:
        raise AdminDisabledError("admin endpoints are off: no admin.token_file configured")
    given = request.headers.get("Authorization", "")
    scheme, _, credential = given.partition(" ")
    # aiohttp decodes header bytes that are not UTF-8 into lone surrogates: "surrogatepass"
    # encodes any str, so a header of arbitrary bytes is a wrong token (401), never a 500.
    presented = credential.strip().encode("utf-8", "surrogatepass")
    # compare_digest on bytes of any length: no early exit that times the token out.
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented, token.encode()):
        raise UnauthorizedError("a valid bearer token is required")


async def sync(request: web.Request) -> web.Response:
    """Sync the models to the fleet manifest now; answers what happened per model."""
    _authorize(request)
    syncer = request.app.get(keys.SYNCER)
    if syncer is None:
        raise ConflictError("no fleet manifest configured (lifecycle.manifest)")
    report = await syncer.sync()
    return json_response({"report": report, "connected": syncer.status.connected})
