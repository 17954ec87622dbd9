"""One state dir, several processes: the old and the surge pod of a DaemonSet update share the
node's hostPath, a ``cache import`` may run beside the daemon.

- :class:`StateLock`: ``flock`` on ``<models>/lock``, held briefly around each blob commit,
  each garbage collection and each read-modify-write of ``state.json``; never across a
  download or a model load. Re-entrant within a process (``remember`` saves the state under
  the lock it already holds). It blocks: async code takes it in a worker thread.
- :class:`Owner`: each process registers under ``<models>/owners/<id>``: ``<id>.lock``, which it
  holds locked (``flock``) for as long as it lives, and ``<id>.json``, its lease: the blobs it
  serves or is downloading. Its partial downloads are named ``.partial-<id>-*``.
- A process is alive while its ``.lock`` is locked: the kernel releases the lock when the
  process ends, ``kill -9`` and power loss included. This holds across PID namespaces (two
  pods may both be PID 1) and across PID reuse, where a PID and start time would not.
  Registering and reaping happen under the state lock, so neither sees the other half done.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from inference.files import atomic_write

log = logging.getLogger(__name__)

LOCK_NAME = "lock"
OWNERS_DIR = "owners"


class StateLock:
    """An exclusive ``flock`` on ``<root>/lock``, re-entrant within this process."""

    def __init__(self, root: Path) -> None:
        self._path = root / LOCK_NAME
        self._thread_lock = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        with self._thread_lock:
            if self._depth == 0:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing the only descriptor releases the flock
                    self._fd = None


class Owner:
    """This process's registration in the state dir, made on first use."""

    def __init__(self, root: Path, lock: StateLock) -> None:
        self.id = secrets.token_hex(8)
        self._dir = root / OWNERS_DIR
        self._lock = lock
        self._fd: int | None = None
        self._lease: frozenset[str] = frozenset()

    @property
    def partial_prefix(self) -> str:
        return f"{self.id}-"

    def register(self) -> None:
        """Hold ``<id>.lock`` for the rest of this process's life (idempotent)."""
        if self._fd is not None:
            return
        with self._lock.held():
            self._dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self._dir / f"{self.id}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody holds it
            self._fd = fd
            self._write(self._lease)

    def close(self) -> None:
        """A clean exit: this process's lease and lock file go now (after ``kill -9`` the next
        process to look reaps them)."""
        if self._fd is None:
            return
        with self._lock.held():
            (self._dir / f"{self.id}.json").unlink(missing_ok=True)
            (self._dir / f"{self.id}.lock").unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
            self._lease = frozenset()

    @property
    def lease(self) -> frozenset[str]:
        return self._lease

    def set_lease(self, blobs: frozenset[str]) -> None:
        """Record what this process serves or fetches (hex digests); the caller holds the
        state lock, so a garbage collection sees either the old lease or the new one."""
        self.register()
        if blobs != self._lease:
            self._write(blobs)
            self._lease = blobs

    def _write(self, blobs: frozenset[str]) -> None:
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "blobs": sorted(blobs)}
        atomic_write(self._dir / f"{self.id}.json", (json.dumps(doc) + "\n").encode())

    def others(self) -> tuple[set[str], set[str] | None]:
        """Under the state lock: the ids of the other live owners, and the blobs their leases
        name (None: a live owner's lease could not be read, so keep every blob). Dead owners'
        files are removed on the way."""
        live: set[str] = set()
        leased: set[str] | None = set()
        if not self._dir.is_dir():
            return live, leased
        for entry in sorted(self._dir.iterdir()):
            owner, dot, kind = entry.name.partition(".")
            if owner == self.id or not dot:
                continue
            if kind == "lock":
                if _alive(entry):
                    live.add(owner)
                else:
                    log.info("removing a dead process's lease from the state dir",
                             extra={"owner": owner})
                    (self._dir / f"{owner}.json").unlink(missing_ok=True)
                    entry.unlink(missing_ok=True)
            elif kind == "json" and not (self._dir / f"{owner}.lock").exists():
                entry.unlink(missing_ok=True)  # its lock went first: a reap cut short
        for owner in live:
            try:
                doc = json.loads((self._dir / f"{owner}.json").read_text())
                blobs = {str(b) for b in doc["blobs"]}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("a live process's lease is unreadable: no blob is collected",
                            extra={"owner": owner, "error": str(exc)})
                leased = None
                continue
            if leased is not None:
                leased |= blobs
        return live, leased


def _alive(lock_file: Path) -> bool:
    """Whether a process holds ``lock_file`` locked: if we can lock it, its owner is gone."""
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Sharing:
    """The lock and this process's registration for one state dir: one per daemon (its app
    makes one model cache and passes it down), one per ``cache import``."""

    def __init__(self, root: Path) -> None:
        self.lock = StateLock(root)
        self.owner = Owner(root, self.lock)

    def close(self) -> None:
        self.owner.close()
