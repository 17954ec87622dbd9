"""Typed keys for the app's long-lived resources (one ``cleanup_ctx`` entry each)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from aiohttp import web

from agent.health import LoopMonitor
from agent.metrics.accelerators import AcceleratorProbe
from agent.metrics.recorder import Recorder
from agent.models.cache import ModelCache
from agent.models.sync import Syncer
from agent.service import ModelService
from agent.settings import Settings
from agent.shutdown import Shutdown
from agent.watchdog.supervisor import Supervisor

SETTINGS = web.AppKey("settings", Settings)
# The loop's default executor (asyncio.to_thread), all its threads started up front.
IO_POOL = web.AppKey("io_pool", ThreadPoolExecutor)
# Decoding, letterboxing and NMS of frames, and parsing large OIP bodies: off the event loop.
PREPOST_POOL = web.AppKey("prepost_pool", ThreadPoolExecutor)
SERVICE = web.AppKey("service", ModelService)
LOOP_MONITOR = web.AppKey("loop_monitor", LoopMonitor)
SHUTDOWN = web.AppKey("shutdown", Shutdown)
RECORDER = web.AppKey("recorder", Recorder)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
SYNCER = web.AppKey("syncer", Syncer)
MODEL_CACHE = web.AppKey("model_cache", ModelCache)  # with a fleet manifest
LOADING = web.AppKey("loading", asyncio.Task[None])  # loading, then scoring, the models
CLIENT_SESSION = web.AppKey("client_session", aiohttp.ClientSession)
ACCELERATORS = web.AppKey("accelerators", list[AcceleratorProbe])

# Per request, for the metrics middleware: set by the model handlers and the error middleware.
MODEL = web.RequestKey("model", str)
TIMING = web.RequestKey("timing_s", dict[str, float])
CAMERA = web.RequestKey("camera", str)
REJECTION = web.RequestKey("rejection_reason", str)
