"""Setting up the model sync from the settings (``lifecycle.*``): start each model from its
cached last-known-good version, build the sources and the syncer, then sync."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Awaitable
from pathlib import Path

import aiohttp

from agent.loading import spec_from_sidecar
from agent.models.cache import ModelCache
from agent.models.oci import OciSource
from agent.models.sources import Fetcher, FileSource, HttpSource, RetryPolicy, Source, SourceError
from agent.models.swap import Swapper
from agent.models.sync import Syncer
from agent.service import ModelService
from inference.errors import EdgeError

log = logging.getLogger(__name__)


def use_last_known_good(service: ModelService, cache: ModelCache) -> None:
    """Before loading: serve each model's last-known-good cached version, no network needed."""
    removed = cache.recover()
    if removed:
        log.warning("removed partial or corrupt blobs from the cache", extra={"blobs": removed})
    for name, good in cache.last_known_good().items():
        if name not in service.models:
            continue
        golden = cache.path(good.golden) if good.golden and cache.has(good.golden) else None
        try:
            spec = spec_from_sidecar(
                cache.path(good.model), good.sidecar, good.source, good.model,
                golden_path=golden,
                variant_path=lambda v: cache.path(v.sha256) if cache.has(v.sha256) else None)
        except EdgeError as exc:  # a sidecar state.json kept that no longer reads: settings'
            log.error("cached last-known-good version unusable",
                      extra={"model": name, "version": good.version, "error": exc.message})
            continue
        service.start_from(name, dataclasses.replace(spec, version=good.version))
        log.info("starting from the cached last-known-good version",
                 extra={"model": name, "version": good.version})


def read_credentials(path: str) -> dict[str, tuple[str, str]]:
    """Registry credentials from a file; never logged. A file that is not there (an optional
    Secret not created): anonymous pulls. One that is there but unreadable: a start-up error."""
    if not path or not Path(path).exists():
        return {}
    try:
        doc = json.loads(Path(path).read_text())
        return {str(h): (str(c["username"]), str(c["password"])) for h, c in doc.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SourceError(
            f"lifecycle.registry_credentials {path}: expected JSON "
            f'{{"host:port": {{"username": ..., "password": ...}}}} ({type(exc).__name__})'
        ) from None


def manifest_ref(value: str) -> str:
    # absolute(), not resolve(): a ConfigMap mount is a symlink that must be followed anew.
    return value if "://" in value else Path(value).absolute().as_uri()


def build_syncer(service: ModelService, cache: ModelCache,
                 session: aiohttp.ClientSession) -> Syncer:
    cfg = service.settings.lifecycle
    http = HttpSource(session)
    oci = OciSource(session, frozenset(cfg.insecure_registries),
                    read_credentials(cfg.registry_credentials))
    sources: dict[str, Source] = {
        "file": FileSource(), "http": http, "https": http, "oci": oci, "oci-blob": oci,
    }
    fetcher = Fetcher(
        sources, cache, RetryPolicy(cfg.retry_attempts, 0.5, cfg.retry_max_s), cfg.max_model_bytes
    )
    return Syncer(service, fetcher, cache, Swapper(service), manifest_ref(cfg.manifest),
                  cfg.resolved_node_name(), cfg.keep_versions)


async def sync_after(
    loaded: Awaitable[None], syncer: Syncer, interval_s: float, watch_s: float
) -> None:
    await loaded  # the cached versions serve first; then the network may change them
    await syncer.run(interval_s, watch_s)

