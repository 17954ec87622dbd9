"""Pools started up front: all their threads exist before the first task, and stay."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

from agent import pools


def _named(prefix: str) -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith(prefix))


def test_prestart_starts_every_thread():
    pool = ThreadPoolExecutor(5, thread_name_prefix="prestart-all")
    try:
        pools.prestart(pool, 5)
        assert _named("prestart-all") == 5
        # Tasks afterwards reuse them: overlapping blocking calls start no more threads.
        release = threading.Event()
        futures = [pool.submit(release.wait, 5) for _ in range(5)]
        assert _named("prestart-all") == 5
        release.set()
        assert all(f.result() for f in futures)
    finally:
        pool.shutdown(wait=True)
    assert _named("prestart-all") == 0


def test_a_lazy_pool_grows_late_which_is_what_prestart_prevents():
    """The behaviour the module exists for: without prestart, overlapping calls add threads."""
    pool = ThreadPoolExecutor(3, thread_name_prefix="lazy-pool")
    try:
        pool.submit(time.sleep, 0).result()
        before = _named("lazy-pool")
        release = threading.Event()
        futures = [pool.submit(release.wait, 5) for _ in range(3)]
        assert _named("lazy-pool") > before
        release.set()
        for f in futures:
            f.result()
    finally:
        pool.shutdown(wait=True)


def test_a_barrier_that_times_out_leaves_the_pool_usable(monkeypatch, caplog):
    monkeypatch.setattr(pools, "PRESTART_TIMEOUT_S", 0.2)
    pool = ThreadPoolExecutor(2, thread_name_prefix="prestart-short")
    try:
        pools.prestart(pool, 3)  # more than the pool can start: the barrier never fills
        assert "could not start 3 threads" in caplog.text
        assert pool.submit(lambda: 42).result() == 42
    finally:
        pool.shutdown(wait=True)


def test_io_threads_follows_asyncio_default_sizing(monkeypatch):
    monkeypatch.setattr(pools, "usable_cores", lambda: 2)
    assert pools.io_threads() == 6
    monkeypatch.setattr(pools, "usable_cores", lambda: 64)
    assert pools.io_threads() == 32
