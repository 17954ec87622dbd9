"""Every JSON body and log line the daemon writes goes through :func:`dumps`: strict JSON that
any parser reads. Python's ``json`` writes bare ``NaN``/``Infinity`` by default, which no
strict parser accepts; here a non-finite float becomes ``null`` instead."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from aiohttp import web


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any, *, default: Callable[[Any], Any] | None = None) -> str:
    """``json.dumps`` that never writes ``NaN``, ``Infinity`` or ``-Infinity``."""
    try:  # the common case: nothing to replace, one pass
        return json.dumps(value, allow_nan=False, default=default)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, default=default)


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """``web.json_response`` with the strict-JSON guarantee."""
    return web.json_response(data, status=status, headers=headers, dumps=dumps)
