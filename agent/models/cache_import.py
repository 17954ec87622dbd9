"""``edge-agent cache import``: pre-seed the model cache from files, for air-gapped installs.

The version (a sidecar ``model.json`` and the ONNX file it names, as published) is read through
the same ``file://`` source and fetcher as a sync — verified against the sidecar's sha256 while it
is written into the content-addressed cache — and recorded in ``state.json`` as the model's
last-known-good version: the daemon starts on it with no network.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from agent.models.cache import CachedVersion, CacheError, ModelCache, parse_digest
from agent.models.sources import Fetcher, FileSource, RetryPolicy
from inference.errors import EdgeError
from inference.files import check_writable_dir


async def _fetch(sidecar_uri: str, cache: ModelCache, name: str | None) -> CachedVersion:
    fetcher = Fetcher({"file": FileSource()}, cache, RetryPolicy(attempts=1), 1 << 40)
    resolved = await fetcher.resolve(sidecar_uri)
    model = name or str(resolved.sidecar.get("name") or "")
    if not model:
        raise CacheError(f"{sidecar_uri}: no model name (give --name)")
    await fetcher.fetch(resolved)
    version = CachedVersion(resolved.version, parse_digest(resolved.digest), resolved.sidecar,
                            resolved.source)
    cache.remember(model, version)
    return version


def import_version(sidecar_path: Path, state_dir: Path, name: str | None = None) -> CachedVersion:
    cache = ModelCache(state_dir)
    try:
        return asyncio.run(_fetch(sidecar_path.resolve().as_uri(), cache, name))
    finally:
        cache.close()  # what it imported is in state.json: kept without a lease


def main_import(sidecar: Path, state_dir: Path, name: str | None) -> int:
    try:
        check_writable_dir(state_dir, "state_dir")
        version = import_version(sidecar, state_dir, name)
    except EdgeError as exc:
        print(f"edge-agent: {exc.message}")
        return 1
    print(f"imported {version.version} ({version.model[:12]}) into {state_dir}")
    return 0
