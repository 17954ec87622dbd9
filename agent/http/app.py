"""The application factory: routes, middleware, and one ``cleanup_ctx`` entry per resource."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
from aiohttp import web

from agent.golden_scoring import score_all
from agent.health import Liveness, LoopMonitor
from agent.http import admin, handlers, keys, metrics, v2
from agent.http.body import check_headers, check_length, expect_handler
from agent.http.errors import error_middleware
from agent.metrics.accelerators import open_probes
from agent.metrics.recorder import Recorder
from agent.models.cache import ModelCache
from agent.models.sync_setup import build_syncer, sync_after, use_last_known_good
from agent.pools import io_threads, prestart
from agent.service import ModelService
from agent.settings import Settings
from agent.shutdown import Shutdown, signal_ctx
from agent.watchdog.hardware import HardwareWatchdog
from agent.watchdog.selftest import SelfTests
from agent.watchdog.supervisor import State, Supervisor, systemd_watchdog_period
from inference.cpu import lower_thread_priority, usable_cores


def create_app(settings: Settings, *, handle_signals: bool = False) -> web.Application:
    """Build the daemon's app. ``handle_signals``: install the graceful SIGTERM/SIGINT drain
    (the runner must then leave signals alone)."""
    app = web.Application(middlewares=[metrics.metrics_middleware, error_middleware])
    app[keys.SETTINGS] = settings
    app[keys.SHUTDOWN] = Shutdown()
    app.cleanup_ctx.append(_io_pool_ctx)
    app.cleanup_ctx.append(_prepost_pool_ctx)
    app.cleanup_ctx.append(_loop_monitor_ctx)
    app.cleanup_ctx.append(_metrics_ctx)
    # Before the service: cleaned up after it, so the watchdogs are fed through the drain.
    app.cleanup_ctx.append(_supervisor_ctx)
    # One entry per resource; cleaned up in reverse: the tasks stop before the service drains.
    app.cleanup_ctx.append(_service_ctx)
    app.cleanup_ctx.append(_loading_ctx)
    app.cleanup_ctx.append(_client_session_ctx)
    app.cleanup_ctx.append(_sync_ctx)
    app.cleanup_ctx.append(_rescoring_ctx)
    app.cleanup_ctx.append(_self_tests_ctx)
    if handle_signals:
        app.cleanup_ctx.append(signal_ctx(app[keys.SHUTDOWN], settings.drain_grace_s))
    app.router.add_post(
        "/v1/models/{name}/detect", handlers.detect, expect_handler=expect_handler(check_headers)
    )
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/metrics/summary", metrics.summary)
    app.router.add_get("/metrics", metrics.full)
    app.router.add_post("/v1/admin/sync", admin.sync, expect_handler=expect_handler(check_length))
    app.router.add_get("/livez", handlers.livez)
    app.router.add_get("/v2/health/live", handlers.v2_live)
    app.router.add_get("/v2/health/ready", handlers.v2_ready)
    app.router.add_get("/v2", v2.server_metadata)
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_post(
            prefix + "/infer", v2.infer, expect_handler=expect_handler(check_length)
        )
        app.router.add_get(prefix, v2.model_metadata)
        app.router.add_get(prefix + "/ready", v2.model_ready)
    return app


async def _io_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    # The loop's default executor (``asyncio.to_thread``: disk I/O, downloads, golden scoring),
    # started in full. The loop shuts it down when it closes, after every cleanup here has run
    # (a cleanup may still need it).
    threads = io_threads()
    pool = ThreadPoolExecutor(threads, thread_name_prefix="io")
    prestart(pool, threads)
    asyncio.get_running_loop().set_default_executor(pool)
    app[keys.IO_POOL] = pool
    yield


async def _prepost_pool_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[keys.SETTINGS].runtime
    threads = runtime.preprocess_threads or usable_cores()
    pool = ThreadPoolExecutor(
        threads,
        thread_name_prefix="prepost",
        initializer=lower_thread_priority,
        initargs=(runtime.worker_nice,),
    )
    prestart(pool, threads)
    app[keys.PREPOST_POOL] = pool
    yield
    pool.shutdown(wait=True, cancel_futures=True)


async def _loop_monitor_ctx(app: web.Application) -> AsyncIterator[None]:
    monitor = LoopMonitor(app[keys.SETTINGS].health.loop_probe_interval_s)
    app[keys.LOOP_MONITOR] = monitor
    monitor.start()
    yield
    await monitor.stop()


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    app[keys.RECORDER] = Recorder(
        [m.name for m in settings.models],
        window_s=settings.metrics.window_s,
        max_cameras=settings.metrics.max_cameras,
    )
    probes = await asyncio.to_thread(open_probes) if settings.metrics.accelerators else []
    app[keys.ACCELERATORS] = probes
    yield


def _state(app: web.Application) -> State:
    service = app.get(keys.SERVICE)
    if service is None:
        return State(False, "starting")
    if app[keys.SHUTDOWN].draining:
        return State(service.ready(), "draining: finishing in-flight requests", stopping=True)
    if service.ready():
        return State(True, f"serving {', '.join(sorted(service.models))}")
    waiting = ", ".join(f"{n} {s}" for n, s in sorted(service.not_ready().items()))
    return State(False, f"{'failed' if service.failed() else 'loading'}: {waiting}")


def _live(app: web.Application) -> Liveness:
    if keys.SERVICE not in app:
        return Liveness(True, 0.0, 0.0, ())
    return handlers.liveness_of(app)


async def _supervisor_ctx(app: web.Application) -> AsyncIterator[None]:
    cfg = app[keys.SETTINGS].watchdog
    systemd_period = systemd_watchdog_period(os.environ)
    tick = min(cfg.interval_s, systemd_period or cfg.interval_s)
    hardware = HardwareWatchdog(Path(cfg.device), cfg.timeout_s) if cfg.device else None
    supervisor = Supervisor(
        lambda: _live(app),
        lambda: _state(app),
        tick_s=tick,
        extend_timeout_s=cfg.extend_timeout_s,
        hardware=hardware,
    )
    app[keys.SUPERVISOR] = supervisor
    supervisor.start()
    yield
    await supervisor.stop(clean=app[keys.SERVICE].clean_shutdown if keys.SERVICE in app else True)


async def _self_tests_ctx(app: web.Application) -> AsyncIterator[None]:
    tests = SelfTests(app[keys.SERVICE], app[keys.SETTINGS].health.selftest_interval_s)
    tests.start()
    yield
    await tests.stop()


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    service = ModelService(
        settings, app[keys.PREPOST_POOL], on_queue_depth=app[keys.RECORDER].observe_queue
    )
    cache = None
    if settings.lifecycle.manifest:
        # One cache (one lock and lease on the state dir) for the start-up and the sync.
        cache = app[keys.MODEL_CACHE] = ModelCache(settings.state_dir)
        await asyncio.to_thread(use_last_known_good, service, cache)
    app[keys.SERVICE] = service
    yield
    app[keys.SHUTDOWN].begin_drain("shutdown")
    await service.close(settings.drain_timeout_s)
    if cache is not None:
        await asyncio.to_thread(cache.close)


async def _load_and_score(service: ModelService) -> None:
    await service.load_all()
    if service.settings.validate_golden:
        await score_all(service)


async def _loading_ctx(app: web.Application) -> AsyncIterator[None]:
    # In the background: the port answers at once and /health says what it waits for.
    loading = asyncio.create_task(_load_and_score(app[keys.SERVICE]), name="load-models")
    app[keys.LOADING] = loading
    yield
    await _cancel(loading)


async def _client_session_ctx(app: web.Application) -> AsyncIterator[None]:
    """The HTTP client the model sync reaches registries and the manifest URL with."""
    sync = app[keys.SETTINGS].lifecycle
    if not sync.manifest:
        yield
        return
    session = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=sync.stall_timeout_s, sock_read=sync.stall_timeout_s
        )
    )
    app[keys.CLIENT_SESSION] = session
    yield
    await session.close()


async def _sync_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not settings.lifecycle.manifest:
        yield
        return
    syncer = build_syncer(app[keys.SERVICE], app[keys.MODEL_CACHE], app[keys.CLIENT_SESSION])
    app[keys.SYNCER] = syncer
    syncing = asyncio.create_task(
        sync_after(
            asyncio.shield(app[keys.LOADING]),
            syncer,
            settings.lifecycle.poll_interval_s,
            settings.lifecycle.watch_interval_s,
        ),
        name="model-sync",
    )
    yield
    await _cancel(syncing)
    await syncer.close()  # bakes end: their previous versions drain before the service does


async def _rescore(service: ModelService, interval_s: float) -> None:
    """Re-score the models on their golden sets now and then, when they are idle."""
    while True:
        await asyncio.sleep(interval_s)
        await score_all(service, idle_only=True)


async def _rescoring_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    if not (settings.validate_golden and settings.revalidate_interval_s > 0):
        yield
        return
    rescoring = asyncio.create_task(
        _rescore(app[keys.SERVICE], settings.revalidate_interval_s), name="rescore"
    )
    yield
    await _cancel(rescoring)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
