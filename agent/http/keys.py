"""Typed keys for the app's long-lived resources (one ``cleanup_ctx`` entry each)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from agent.health import LoopMonitor
from agent.lifecycle import Lifecycle
from agent.service import ModelService
from agent.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
PRE_POOL = web.AppKey("pre_pool", ThreadPoolExecutor)
SERVICE = web.AppKey("service", ModelService)
LOOP_MONITOR = web.AppKey("loop_monitor", LoopMonitor)
LIFECYCLE = web.AppKey("lifecycle", Lifecycle)
