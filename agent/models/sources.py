"""Where model versions come from: ``file://`` and ``http(s)://`` sidecar URLs.

A reference names a version's sidecar (``model.json``: name, version, kind, ``file``,
``sha256``); the ONNX file is ``file`` relative to it, and so is its golden set when the sidecar
names one (``golden``: ``file``, ``sha256``). The sidecar's ``sha256`` is the version's
identity: every download is verified against its digest before the cache gives it its name.
Network reads are retried with exponential backoff, jitter and a cap (tenacity); a file whose
content does not match its digest is not retried (the source is wrong, not the network).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urljoin, urlparse

import aiohttp
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from agent.models.cache import CacheError, ModelCache, parse_digest
from inference.errors import EdgeError
from inference.variants import VariantEntry, sidecar_variants

log = logging.getLogger(__name__)
CHUNK = 256 * 1024
MAX_SIDECAR_BYTES = 1 << 20


class SourceError(EdgeError):
    """A model version could not be resolved or fetched (after retries)."""


class TransientError(SourceError):
    """Worth retrying: the network, a 5xx, a timeout."""


class UnreachableError(SourceError):
    """Still failing after every retry: the control plane or registry is out of reach."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    initial_s: float = 0.5
    max_s: float = 30.0


@dataclass(frozen=True)
class Resolved:
    """A version known by its sidecar; ``model_url`` is where its ONNX file is, ``golden_url``
    where its golden set is (None: it carries none)."""

    source: str
    sidecar: dict[str, Any]
    model_url: str
    golden_url: str | None = None
    # Its lower-precision files (sidecar ``variants``) and where each is.
    variants: tuple[tuple[VariantEntry, str], ...] = ()

    @property
    def golden_digest(self) -> str:
        return parse_digest(str(self.sidecar["golden"]["sha256"]))

    @property
    def version(self) -> str:
        return str(self.sidecar.get("version") or parse_digest(self.digest)[:12])

    @property
    def digest(self) -> str:
        return str(self.sidecar["sha256"])


class Source(Protocol):
    async def sidecar(self, ref: str) -> bytes: ...

    def file_url(self, ref: str, file: str, sha256: str) -> str:
        """Where the version that ``ref`` names keeps its ``file`` (its ONNX file, its golden
        set), whose digest is ``sha256`` (hex)."""
        ...

    def stream(self, url: str) -> AsyncIterator[bytes]: ...


def _beside(ref: str, file: str) -> str:
    # Checked unquoted: a file source unquotes the URL, so "..%2F" would climb out of the share.
    plain = unquote(file)
    if "/" in plain or "\\" in plain or plain in ("", ".", ".."):
        raise SourceError(f"{ref}: the sidecar's file {file!r} must be a file name beside it",
                          file)
    return urljoin(ref, file)


class FileSource:
    """``file:///path/model.json``: air-gapped nodes, a USB stick, a mounted volume."""

    def file_url(self, ref: str, file: str, sha256: str) -> str:
        return _beside(ref, file)

    async def sidecar(self, ref: str) -> bytes:
        return await asyncio.to_thread(_read_limited, _path(ref), MAX_SIDECAR_BYTES)

    async def stream(self, url: str) -> AsyncIterator[bytes]:
        path = _path(url)
        try:
            f = await asyncio.to_thread(path.open, "rb")
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from exc
        try:
            while chunk := await asyncio.to_thread(f.read, CHUNK):
                yield chunk
        finally:
            f.close()


class HttpSource:
    """``https://`` and ``http://``, through the daemon's one client session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        # Conditional requests: a manifest polled every 30 s by 200 nodes costs a 304 each.
        self._etags: dict[str, tuple[str, bytes]] = {}

    def file_url(self, ref: str, file: str, sha256: str) -> str:
        return _beside(ref, file)

    async def sidecar(self, ref: str) -> bytes:
        cached = self._etags.get(ref)
        headers = {"If-None-Match": cached[0]} if cached else {}
        async with self._session.get(ref, headers=headers) as resp:
            if resp.status == 304 and cached is not None:
                return cached[1]
            check_status(resp, ref)
            body = await resp.content.read(MAX_SIDECAR_BYTES + 1)
            etag = resp.headers.get("ETag")
        if len(body) > MAX_SIDECAR_BYTES:
            raise SourceError(f"{ref}: sidecar larger than {MAX_SIDECAR_BYTES} bytes")
        if etag:
            self._etags[ref] = (etag, body)
        return body

    async def stream(self, url: str) -> AsyncIterator[bytes]:
        async with self._session.get(url) as resp:
            check_status(resp, url)
            async for chunk in resp.content.iter_chunked(CHUNK):
                yield chunk


def check_status(resp: aiohttp.ClientResponse, url: str) -> None:
    if resp.status >= 500 or resp.status == 429:
        raise TransientError(f"{url}: HTTP {resp.status}")
    if resp.status != 200:
        raise SourceError(f"{url}: HTTP {resp.status}")


def _path(url: str) -> Path:
    parsed = urlparse(url)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        raise SourceError(f"not a local file URL: {url!r}")
    return Path(unquote(parsed.path))


def _read_limited(path: Path, limit: int) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > limit:
        raise SourceError(f"{path}: sidecar larger than {limit} bytes")
    return data


class Fetcher:
    """Resolves references and downloads versions into the cache, with retries."""

    def __init__(
        self,
        sources: dict[str, Source],
        cache: ModelCache,
        retry: RetryPolicy,
        max_model_bytes: int,
    ) -> None:
        self._sources = sources
        self._cache = cache
        self._retry = retry
        self._max_model_bytes = max_model_bytes

    def _source(self, ref: str) -> Source:
        scheme = urlparse(ref).scheme
        source = self._sources.get(scheme)
        if source is None:
            raise SourceError(f"unsupported source {ref!r}", {"schemes": sorted(self._sources)})
        return source

    async def read(self, ref: str) -> bytes:
        """A small document (a sidecar, the fleet manifest), with retries."""
        data: bytes = await self._retrying(lambda: self._source(ref).sidecar(ref))
        return data

    async def resolve(self, ref: str) -> Resolved:
        raw = await self.read(ref)
        try:
            sidecar = json.loads(raw)
            parse_digest(str(sidecar["sha256"]))
            str(sidecar["file"])
        except (ValueError, KeyError, TypeError, EdgeError) as exc:
            raise SourceError(f"{ref}: not a model sidecar (needs file and sha256): {exc}") from exc
        source = self._source(ref)
        model_url = source.file_url(ref, str(sidecar["file"]),
                                    parse_digest(str(sidecar["sha256"])))
        try:
            variants = tuple((v, source.file_url(ref, v.file, v.sha256))
                             for v in sidecar_variants(sidecar, ref))
        except EdgeError as exc:
            raise SourceError(exc.message, exc.detail) from exc
        golden = sidecar.get("golden")
        if golden is None:
            return Resolved(ref, sidecar, model_url, variants=variants)
        if isinstance(golden, dict) and "sha256" not in golden:
            # (a bundled model's sidecar: its set ships in the package, not beside it)
            log.warning("the sidecar's golden set has no sha256: taken without it",
                        extra={"source": ref})
            return Resolved(ref, {k: v for k, v in sidecar.items() if k != "golden"}, model_url,
                            variants=variants)
        try:
            file, digest = str(golden["file"]), parse_digest(str(golden["sha256"]))
        except (KeyError, TypeError, EdgeError) as exc:
            raise SourceError(f"{ref}: the sidecar's golden set needs file and sha256 "
                              f"(a sha256 digest): {exc}") from exc
        return Resolved(ref, sidecar, model_url, source.file_url(ref, file, digest), variants)

    async def fetch(self, resolved: Resolved) -> Path:
        """The version's ONNX file in the cache (downloaded and verified if not there yet),
        and its golden set and lower-precision variants beside it in the cache."""
        for entry, url in resolved.variants:
            try:
                await self._fetch_blob(url, entry.sha256)
            except CacheError as exc:
                raise SourceError(f"{resolved.source}: {entry.precision} variant {entry.file}: "
                                  f"{exc.message}", exc.detail) from exc
        if resolved.golden_url is not None:
            try:
                await self._fetch_blob(resolved.golden_url, resolved.golden_digest)
            except CacheError as exc:  # wrong content: say which file was wrong
                raise SourceError(f"{resolved.source}: golden set "
                                  f"{resolved.sidecar['golden']['file']}: {exc.message}",
                                  exc.detail) from exc
        return await self._fetch_blob(resolved.model_url, resolved.digest)

    def variant_path(self, entry: VariantEntry) -> Path | None:
        """Where :meth:`fetch` put a variant (None: not in the cache)."""
        return self._cache.path(entry.sha256) if self._cache.has(entry.sha256) else None

    def golden_path(self, resolved: Resolved) -> Path | None:
        """Where :meth:`fetch` put the version's golden set (None: it carries none)."""
        return None if resolved.golden_url is None else self._cache.path(resolved.golden_digest)

    async def _fetch_blob(self, url: str, digest: str) -> Path:
        # Leased first: no other process sharing the state dir collects it from now on.
        if await asyncio.to_thread(self._cache.claim, digest):
            return self._cache.path(digest)
        source = self._source(url)

        async def download() -> Path:
            writer = await asyncio.to_thread(self._cache.writer, digest, self._max_model_bytes)
            try:
                async for chunk in source.stream(url):
                    writer.write(chunk)
                return await asyncio.to_thread(writer.commit)
            except BaseException:
                await asyncio.to_thread(writer.abort)
                raise

        return await self._retrying(download)

    async def _retrying(self, attempt: Callable[[], Any]) -> Any:
        policy = self._retry
        transient = (TransientError, aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)
        try:
            async for retry in AsyncRetrying(
                stop=stop_after_attempt(policy.attempts),
                wait=wait_exponential_jitter(
                    multiplier=policy.initial_s, jitter=policy.initial_s, max=policy.max_s
                ),
                retry=retry_if_exception_type(transient),
                reraise=True,
            ):
                with retry:
                    if retry.retry_state.attempt_number > 1:
                        log.info("retrying model source",
                                 extra={"attempt": retry.retry_state.attempt_number})
                    return await attempt()
        except transient as exc:
            raise UnreachableError(
                f"unreachable after {policy.attempts} attempts: {exc!r}"
            ) from exc
        raise AssertionError("not reached: reraise=True re-raises the last error")
