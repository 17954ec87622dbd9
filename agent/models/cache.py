"""The on-disk model cache: content-addressed blobs and ``state.json``, crash-safe.

Layout under ``<state_dir>/models/``::

    blobs/sha256/<hex>      one file per blob (ONNX model, golden set), named by its digest
    state.json              per model: the last-known-good version and its blobs

A blob is written to a temp file beside its final name, hashed while it is written, fsynced and
only then renamed into place, so a power cut or a ``kill -9`` leaves either no blob or a whole,
verified one; ``state.json`` is written the same way. At start :meth:`ModelCache.recover`
deletes leftover temp files and any blob whose content does not match its name.

Two processes may share the state dir (``agent.models.statelock``): commits, garbage
collection and every read-modify-write of ``state.json`` take the state lock; a process's temp
files carry its owner id, and neither ``recover`` nor ``collect_garbage`` removes a live
process's temp file or a blob named in a live process's lease.
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

from agent.models.statelock import Sharing
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
    def __init__(self, state_dir: Path, share: Sharing | None = None) -> None:
        self.root = state_dir / "models"
        self.blobs = self.root / "blobs" / "sha256"
        self.state_file = self.root / "state.json"
        # This process's lock and lease on the state dir: a daemon makes one cache and
        # passes it to all that use the state dir (a test may pass a Sharing of its own).
        self.share = share if share is not None else Sharing(self.root)

    def close(self) -> None:
        """This process leaves the state dir: its lease goes (nothing it served is kept)."""
        self.share.close()

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
        self.claim(digest)
        return BlobWriter(self.blobs, parse_digest(digest), max_bytes, self.share)

    # -- sharing the state dir -------------------------------------------------------------
    def claim(self, digest: str) -> bool:
        """Add ``digest`` to this process's lease (no other process collects it from now on);
        whether the blob is in the cache already. Call it before using or fetching a blob."""
        hexdigest = parse_digest(digest)
        owner = self.share.owner
        try:
            with self.share.lock.held():
                owner.set_lease(owner.lease | {hexdigest})
                return self.has(hexdigest)
        except OSError as exc:  # a full disk: not fetched, rather than fetched unprotected
            raise _unwritable(self.root, exc) from exc

    def serve(self, digests: set[str]) -> None:
        """This process now needs only these blobs (hex digests of the versions it serves),
        with the other blobs of their cached versions (golden sets): its lease becomes that."""
        try:
            with self.share.lock.held():
                state = self.load_state()
                needed = set(digests) | {
                    blob for versions in state.values() for v in versions if v.model in digests
                    for blob in v.blobs()}
                self.share.owner.set_lease(frozenset(needed))
        except OSError as exc:  # the lease on disk stays the larger one it was: still safe
            log.warning("could not update this process's lease", extra={"error": str(exc)})

    def last_known_good(self) -> dict[str, CachedVersion]:
        """Each model's last-known-good version, its blobs leased to this process in the same
        locked step (no other process collects them before this one has loaded them)."""
        with self.share.lock.held():
            good = {name: vs[0] for name, vs in self.load_state().items() if vs}
            owner = self.share.owner
            try:
                owner.set_lease(owner.lease | {b for v in good.values() for b in v.blobs()})
            except OSError as exc:  # a full disk must not stop a start from the cache
                log.warning("could not lease the last-known-good versions",
                            extra={"error": str(exc)})
        return good

    def recover(self) -> list[str]:
        """Delete temp files of processes that are gone and blobs whose content is not their
        name; returns what went."""
        removed: list[str] = []
        if not self.blobs.is_dir():
            return removed
        with self.share.lock.held():
            live, _ = self.share.owner.others()
            removed += self._orphans(live)
        # Hashing every blob takes a while: outside the lock; a wrong one goes under it, if
        # it is still the file that was hashed.
        for entry in self.blobs.iterdir():
            if not HEX_RE.match(entry.name):
                continue
            try:
                inode = entry.stat().st_ino
                wrong = file_digest(entry) != entry.name
            except FileNotFoundError:  # another process collected it meanwhile
                continue
            if wrong:
                with self.share.lock.held(), contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_ino == inode:
                        log.warning("corrupt blob removed from the model cache",
                                    extra={"blob": entry.name})
                        entry.unlink()
                        removed.append(entry.name)
        return removed

    def _orphans(self, live: set[str]) -> list[str]:
        """Under the lock: temp files whose writer is gone (not this process, not ``live``)."""
        removed = []
        mine = TMP_PREFIX + self.share.owner.partial_prefix
        for entry in self.blobs.iterdir():
            if HEX_RE.match(entry.name) or entry.name.startswith(mine):
                continue
            if entry.name.startswith(TMP_PREFIX):
                owner = entry.name[len(TMP_PREFIX):].partition("-")[0]
                if owner in live:
                    continue  # another live process's download
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
        # state.json's and the leases' temp files are written under the lock: any there now
        # is a writer's that died.
        for folder in (self.root, self.root / "owners"):
            if folder.is_dir():
                for entry in folder.glob(".*.tmp"):
                    entry.unlink(missing_ok=True)
                    removed.append(entry.name)
        return removed

    def collect_garbage(self, keep: set[str]) -> list[str]:
        """Delete every blob not in ``keep`` (hex digests) nor in a live process's lease (this
        one's included), and the temp files of processes that are gone."""
        removed: list[str] = []
        if not self.blobs.is_dir():
            return removed
        with self.share.lock.held():
            live, leased = self.share.owner.others()
            removed += self._orphans(live)
            if leased is None:
                return removed
            keep = set(keep) | leased | self.share.owner.lease
            for entry in self.blobs.iterdir():
                if HEX_RE.match(entry.name) and entry.name not in keep:
                    entry.unlink(missing_ok=True)
                    removed.append(entry.name)
            if removed:
                fsync_dir(self.blobs)
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
        with self.share.lock.held():  # read-modify-write: another process may write it too
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
        with self.share.lock.held():
            state = self.load_state()
            state[name] = [v for v in state.get(name, []) if v.model != digest]
            self.save_state(state, {**self.rejected(), name: digest})

    def forgive(self, name: str) -> None:
        """The manifest names another version of ``name``: its rejection has served."""
        with self.share.lock.held():
            rejected = self.rejected()
            if rejected.pop(name, None) is not None:
                self.save_state(self.load_state(), rejected)

    def save_state(self, state: dict[str, list[CachedVersion]],
                   rejected: dict[str, str] | None = None) -> None:
        """Write ``state`` (and ``rejected``; None: keep what the file says)."""
        with self.share.lock.held():
            rejected = self.rejected() if rejected is None else rejected
            doc: dict[str, Any] = {
                "models": {name: [asdict(v) for v in versions]
                           for name, versions in state.items()}}
            if rejected:
                doc["rejected"] = rejected
            try:
                atomic_write(self.state_file, (json.dumps(doc, indent=2) + "\n").encode())
            except OSError as exc:
                raise CacheError(f"cannot write {self.state_file}: {exc.strerror}") from exc


class BlobWriter:
    def __init__(self, blobs: Path, hexdigest: str, max_bytes: int, share: Sharing) -> None:
        self.final = blobs / hexdigest
        self._blobs = blobs
        self._hexdigest = hexdigest
        self._max_bytes = max_bytes
        self._share = share
        self._hasher = hashlib.sha256()
        self._size = 0
        try:
            share.owner.register()  # its temp file is known as this live process's from now
            fd, name = tempfile.mkstemp(prefix=TMP_PREFIX + share.owner.partial_prefix,
                                        dir=blobs)
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
            with self._share.lock.held():  # not during a garbage collection
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
