"""``edge-agent cache import``: pre-seed the model cache from files, for air-gapped installs.

The version (a sidecar ``model.json`` and the ONNX file it names, as published) is verified
against the sidecar's sha256, stored in the content-addressed cache and recorded in
``state.json`` as the model's last-known-good version: the daemon starts on it with no network.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.models.cache import CachedVersion, CacheError, ModelCache, parse_digest
from inference.errors import EdgeError

CHUNK = 1 << 20


def import_version(sidecar_path: Path, state_dir: Path, name: str | None = None) -> CachedVersion:
    try:
        sidecar = json.loads(sidecar_path.read_text())
        digest = parse_digest(str(sidecar["sha256"]))
        file = str(sidecar["file"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CacheError(f"{sidecar_path}: not a readable model sidecar: {exc}") from exc
    if "/" in file:
        raise CacheError(f"{sidecar_path}: 'file' must be a file name beside it")
    model = name or str(sidecar.get("name") or "")
    if not model:
        raise CacheError(f"{sidecar_path}: no model name (give --name)")
    cache = ModelCache(state_dir)
    writer = cache.writer(digest, max_bytes=1 << 40)
    try:
        with (sidecar_path.parent / file).open("rb") as f:
            while chunk := f.read(CHUNK):
                writer.write(chunk)
    except OSError as exc:
        writer.abort()
        raise CacheError(f"cannot read {sidecar_path.parent / file}: {exc.strerror}") from exc
    writer.commit()
    version = CachedVersion(str(sidecar.get("version") or digest[:12]), digest, sidecar,
                            sidecar_path.resolve().as_uri())
    state = cache.load_state()
    state[model] = [version, *(v for v in state.get(model, []) if v.model != digest)]
    cache.save_state(state)
    return version


def main_import(sidecar: Path, state_dir: Path, name: str | None) -> int:
    try:
        version = import_version(sidecar, state_dir, name)
    except EdgeError as exc:
        print(f"edge-agent: {exc.message}")
        return 1
    print(f"imported {version.version} ({version.model[:12]}) into {state_dir}")
    return 0
