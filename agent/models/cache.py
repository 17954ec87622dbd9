"""The on-disk model cache: content-addressed blobs and ``state.json``, crash-safe.

Layout under ``<state_dir>/models/``::

    blobs/sha256/<hex>      one file per blob (ONNX model, golden set), named by its digest
    state.json              per model: the last-known-good version and its blobs

A blob is written to a temp file beside its final name, hashed while it is written, fsynced and
only then renamed into place, so a power cut or a ``kill -9`` leaves either no blob or a whole,
verified one; ``state.json`` is written the same way. At start :meth:`ModelCache.recover`
deletes leftover temp files and any blob whose content does not match its name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from inference.errors import EdgeError
from inference.files import atomic_write, fsync_dir
from inference.session import file_digest
from inference.variants import sidecar_variants

log = logging.getLogger(__name__)

HEX_RE = re.compile(r"^[0-9a-f]{64}$")
TMP_PREFIX = ".partial-"


class CacheError(EdgeError):
    """A blob could not be stored: wrong digest, too large, disk full or unwritable."""


def parse_digest(digest: str) -> str:
    """``sha256:<hex>`` or ``<hex>`` -> ``<hex>``; anything else (a path, say) is refused."""
    hexdigest = digest.removeprefix("sha256:")
    if not HEX_RE.match(hexdigest):
        raise CacheError(f"not a sha256 digest: {digest!r}")
    return hexdigest


@dataclass
class CachedVersion:
    """A model version whose blobs are all in the cache."""

    version: str
    model: str  # digest (hex) of the ONNX file
    sidecar: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # where it came from, for /v1/models

    @property
    def golden(self) -> str:
        """Digest (hex) of its golden set; empty: it carries none."""
        golden = self.sidecar.get("golden")
        if not isinstance(golden, dict) or "sha256" not in golden:
            return ""
        return parse_digest(str(golden["sha256"]))

    @property
    def variants(self) -> set[str]:
        """Digests (hex) of its lower-precision files (an unreadable list: none)."""
        try:
            return {v.sha256 for v in sidecar_variants(self.sidecar)}
        except EdgeError:
            return set()

    def blobs(self) -> set[str]:
        return {self.model, self.golden, *self.variants} - {""}


class ModelCache:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "models"
        self.blobs = self.root / "blobs" / "sha256"
        self.state_file = self.root / "state.json"

    # -- blobs -----------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        return self.blobs / parse_digest(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def writer(self, digest: str, max_bytes: int) -> BlobWriter:
        """A writer for one blob; :meth:`BlobWriter.commit` verifies it and gives it its name.

        Its methods block (disk I/O, fsync): async callers run them with ``asyncio.to_thread``.
        """
        self.blobs.mkdir(parents=True, exist_ok=True)
        return BlobWriter(self.blobs, parse_digest(digest), max_bytes)

    def recover(self) -> list[str]:
        """Delete temp files and blobs whose content is not their name; returns what went."""
        removed: list[str] = []
        if not self.blobs.is_dir():
            return removed
        for entry in self.blobs.iterdir():
            if entry.name.startswith(TMP_PREFIX) or not HEX_RE.match(entry.name):
                entry.unlink(missing_ok=True)
                removed.append(entry.name)
            elif file_digest(entry) != entry.name:
                log.warning("corrupt blob removed from the model cache", extra={"blob": entry.name})
                entry.unlink(missing_ok=True)
                removed.append(entry.name)
        return removed

    def collect_garbage(self, keep: set[str]) -> list[str]:
        """Delete every blob not in ``keep`` (hex digests)."""
        removed = []
        if self.blobs.is_dir():
            for entry in self.blobs.iterdir():
                if HEX_RE.match(entry.name) and entry.name not in keep:
                    entry.unlink(missing_ok=True)
                    removed.append(entry.name)
        return removed

    # -- state.json ------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        try:
            raw = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("state.json unreadable: starting without it", extra={"error": str(exc)})
            return {}
        return raw if isinstance(raw, dict) else {}

    def load_state(self) -> dict[str, list[CachedVersion]]:
        """Model -> versions, newest first; the first is the last-known-good one."""
        raw = self._read_state()
        state: dict[str, list[CachedVersion]] = {}
        for name, versions in (raw.get("models") or {}).items():
            kept = []
            for v in versions:
                try:
                    cached = CachedVersion(**v)
                    parse_digest(cached.model)
                    cached.golden  # noqa: B018 (a malformed golden digest drops the entry)
                except (TypeError, CacheError):
                    continue
                if self.has(cached.model):
                    kept.append(cached)
            state[name] = kept
        return state

    def remember(self, name: str, version: CachedVersion, keep: int | None = None) -> set[str]:
        """Record ``version`` as ``name``'s last-known-good (first), keep at most ``keep``
        versions of it; returns the digests every model still needs (for garbage collection)."""
        state = self.load_state()
        versions = [version, *(v for v in state.get(name, []) if v.model != version.model)]
        state[name] = versions[:keep] if keep else versions
        self.save_state(state)
        return {blob for vs in state.values() for v in vs for blob in v.blobs()}

    def rejected(self) -> dict[str, str]:
        """Model -> digest (hex) of the version rolled back on this node: not to be tried
        again while the manifest names it."""
        raw = self._read_state().get("rejected")
        return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def reject(self, name: str, digest: str) -> None:
        """Record ``digest`` as ``name``'s rolled-back version: no longer its last-known-good
        (a restart starts from the version before it), not retried by the sync."""
        state = self.load_state()
        state[name] = [v for v in state.get(name, []) if v.model != digest]
        self.save_state(state, {**self.rejected(), name: digest})

    def forgive(self, name: str) -> None:
        """The manifest names another version of ``name``: its rejection has served."""
        rejected = self.rejected()
        if rejected.pop(name, None) is not None:
            self.save_state(self.load_state(), rejected)

    def save_state(self, state: dict[str, list[CachedVersion]],
                   rejected: dict[str, str] | None = None) -> None:
        """Write ``state`` (and ``rejected``; None: keep what the file says)."""
        rejected = self.rejected() if rejected is None else rejected
        doc: dict[str, Any] = {
            "models": {name: [asdict(v) for v in versions] for name, versions in state.items()}}
        if rejected:
            doc["rejected"] = rejected
        try:
            atomic_write(self.state_file, (json.dumps(doc, indent=2) + "\n").encode())
        except OSError as exc:
            raise CacheError(f"cannot write {self.state_file}: {exc.strerror}") from exc


class BlobWriter:
    def __init__(self, blobs: Path, hexdigest: str, max_bytes: int) -> None:
        self.final = blobs / hexdigest
        self._blobs = blobs
        self._hexdigest = hexdigest
        self._max_bytes = max_bytes
        self._hasher = hashlib.sha256()
        self._size = 0
        try:
            fd, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=blobs)
        except OSError as exc:
            raise _unwritable(blobs, exc) from exc
        self._tmp = Path(name)
        self._file = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > self._max_bytes:
            self.abort()
            raise CacheError(f"blob {self._hexdigest[:12]} is larger than {self._max_bytes} bytes")
        self._hasher.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as exc:  # ENOSPC: the old cache stays as it was
            self.abort()
            raise _unwritable(self._blobs, exc) from exc

    def commit(self) -> Path:
        try:
            if self._hasher.hexdigest() != self._hexdigest:
                raise CacheError(
                    f"downloaded content has sha256 {self._hasher.hexdigest()}, "
                    f"expected {self._hexdigest}",
                    {"expected": self._hexdigest, "got": self._hasher.hexdigest()},
                )
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._tmp.chmod(0o644)
            os.replace(self._tmp, self.final)
            fsync_dir(self._blobs)
        except OSError as exc:
            raise _unwritable(self._blobs, exc) from exc
        finally:
            self.abort()
        return self.final

    def abort(self) -> None:
        """Drop the temp file (nothing happens to a committed blob)."""
        if not self._file.closed:
            with contextlib.suppress(OSError):  # closing flushes: on a full disk that fails too
                self._file.close()
        self._tmp.unlink(missing_ok=True)


def _unwritable(path: Path, exc: OSError) -> CacheError:
    return CacheError(f"cannot write to the model cache: {exc.strerror}", {"path": str(path)})
