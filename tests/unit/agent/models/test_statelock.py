"""Two processes on one state dir: the lock, the leases, the partial downloads of the living.

The other process is a real one (a child Python), killed with SIGKILL where it matters: its
flock is released by the kernel, as it is for a pod killed on a node.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.models.cache import TMP_PREFIX, CachedVersion, ModelCache
from agent.models.statelock import Sharing, StateLock

ROOT = Path(__file__).resolve().parents[4]


def blob(text: str) -> tuple[bytes, str]:
    data = text.encode() * 100
    return data, hashlib.sha256(data).hexdigest()


def put(cache: ModelCache, data: bytes, digest: str) -> None:
    writer = cache.writer(digest, 1 << 20)
    writer.write(data)
    writer.commit()


class Child:
    """Another process running ``code`` (with ``state`` the state dir); it prints ``ready``
    when set up, then waits until killed or its stdin closes."""

    def __init__(self, state: Path, code: str) -> None:
        program = "import sys\nfrom pathlib import Path\nstate = Path(sys.argv[1])\n" + \
            textwrap.dedent(code) + "\nprint('ready', flush=True)\nsys.stdin.read()\n"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", program, str(state)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line == "ready\n", line

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.close()


def test_the_lock_is_reentrant_here_and_exclusive_between_processes(tmp_path, children):
    lock = StateLock(tmp_path)
    with lock.held(), lock.held():  # remember() saves the state under the lock it holds
        pass
    holder = Child(tmp_path, """
        from agent.models.statelock import StateLock
        held = StateLock(state).held()
        held.__enter__()
    """)
    children.append(holder)
    got = threading.Event()

    def take() -> None:
        with lock.held():
            got.set()

    waiter = threading.Thread(target=take, daemon=True)
    waiter.start()
    assert not got.wait(0.5)  # the other process holds it
    holder.kill()  # kill -9: the kernel releases its flock
    assert got.wait(30)
    waiter.join()


def test_a_live_processs_partial_and_leased_blob_survive_recover_and_gc(tmp_path, children):
    state = tmp_path / "state"
    served, served_digest = blob("served by the other process")
    unused, unused_digest = blob("nobody's")
    mine = ModelCache(state)
    put(mine, served, served_digest)
    put(mine, unused, unused_digest)
    mine.serve(set())  # this process uses neither
    other = Child(state, f"""
        from agent.models.cache import ModelCache
        cache = ModelCache(state)
        assert cache.claim("{served_digest}")  # serves it
        writer = cache.writer("{"e" * 64}", 1 << 20)  # downloading
        writer.write(b"half a model")
        writer._file.flush()
    """)
    children.append(other)
    (partial,) = [p for p in mine.blobs.iterdir() if p.name.startswith(TMP_PREFIX)]
    (mine.blobs / ".partial-0123456789abcdef-x").write_bytes(b"a dead process's")

    removed = mine.recover() + mine.collect_garbage(keep=set())
    assert sorted(removed) == sorted([".partial-0123456789abcdef-x", unused_digest])
    assert partial.exists()
    assert mine.has(served_digest)

    other.kill()  # the other pod is gone: its partial and its lease go with it
    removed = mine.recover() + mine.collect_garbage(keep=set())
    assert sorted(removed) == sorted([partial.name, served_digest])
    owners = sorted(p.name for p in (mine.root / "owners").iterdir())
    assert owners == sorted([f"{mine.share.owner.id}.lock", f"{mine.share.owner.id}.json"])


def test_state_written_by_two_processes_at_once_loses_no_entry(tmp_path):
    """Each process records its own model 300 times while the other does (both start on the
    same signal): read-modify-write under the lock, so neither overwrites the other's entry."""
    state = tmp_path / "state"
    data, digest = blob("a model")
    put(ModelCache(state, Sharing(state / "models")), data, digest)
    code = f"""
        import sys
        from pathlib import Path
        from agent.models.cache import CachedVersion, ModelCache
        cache = ModelCache(Path(sys.argv[1]))
        name = sys.argv[2]
        print("ready", flush=True)
        sys.stdin.readline()
        for i in range(300):
            cache.remember(name, CachedVersion(str(i), "{digest}"), keep=3)
            assert name in cache.load_state(), "its own entry was overwritten"
    """
    procs = [subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), str(state), name], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    ) for name in ("defects", "fusion")]
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        assert proc.wait(120) == 0
    doc = json.loads((state / "models" / "state.json").read_text())
    assert {name: [v["version"] for v in vs] for name, vs in doc["models"].items()} == {
        "defects": ["299"], "fusion": ["299"]}  # one digest: the newest version of each


def test_a_blob_this_process_serves_is_kept_by_another_process_gc(tmp_path):
    """Two owners in one process (two Sharing objects hold two flocks): B's garbage collection
    keeps what A's lease names, even when state.json no longer does."""
    state = tmp_path / "state"
    a = ModelCache(state, Sharing(state / "models"))
    b = ModelCache(state, Sharing(state / "models"))
    old, old_digest = blob("1.0.0")
    new, new_digest = blob("1.1.0")
    put(a, old, old_digest)
    a.remember("fusion", CachedVersion("1.0.0", old_digest))
    a.serve({old_digest})
    put(b, new, new_digest)
    keep = b.remember("fusion", CachedVersion("1.1.0", new_digest), keep=1)
    assert keep == {new_digest}
    assert b.collect_garbage(keep) == []
    assert a.has(old_digest)
    a.serve({new_digest})  # A swapped to 1.1.0 too: 1.0.0 is nobody's
    assert b.collect_garbage(keep) == [old_digest]


def test_a_clean_close_leaves_the_state_dir_without_its_lease(tmp_path):
    """A daemon that exits cleanly removes its registration itself: what only it served is
    collectable at once, and nothing of it is left in owners/."""
    state = tmp_path / "state"
    a = ModelCache(state, Sharing(state / "models"))
    b = ModelCache(state, Sharing(state / "models"))
    data, digest = blob("served by A only")
    put(a, data, digest)
    a.serve({digest})
    b.serve(set())
    assert b.collect_garbage(keep=set()) == []
    a.close()
    a.close()  # twice: nothing more to do
    owners = sorted(p.name for p in (state / "models" / "owners").iterdir())
    assert owners == sorted([f"{b.share.owner.id}.lock", f"{b.share.owner.id}.json"])
    assert b.collect_garbage(keep=set()) == [digest]
