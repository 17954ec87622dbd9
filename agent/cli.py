"""``edge-agent``: the command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import __version__
from agent.settings import Settings
from agent.settings_loader import SettingsError, load_settings, parse_model_spec
from inference.errors import EdgeError
from inference.files import check_writable_dir

log = logging.getLogger("agent")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge-agent", description="On-device inference agent for edge AI fleets."
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the daemon",
        description="Serve the configured models on HTTP (none configured: the bundled "
        "'defects' and 'fusion' models). Settings: defaults < --config YAML "
        "(or EDGE_AGENT_CONFIG) < EDGE_AGENT_* environment < these flags.",
    )
    serve.add_argument("--config", type=Path, help="YAML settings file")
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve the YOLOv8 ONNX model at PATH as NAME (repeatable; replaces the "
        "bundled models and those of the config file and environment)",
    )
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--state-dir", type=Path, help="model cache and TensorRT engines")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["auto", "json", "text"])
    serve.add_argument("--providers", help="execution providers in order, e.g. cuda,cpu")
    serve.add_argument("--max-batch", type=int, help="images per inference run")
    serve.add_argument("--max-queue", type=int, help="queued requests per model before 503")
    serve.add_argument("--intra-op-threads", type=int, help="ONNX Runtime threads per session")
    cache = sub.add_parser("cache", help="the model cache").add_subparsers(
        dest="cache_command", required=True
    )
    seed = cache.add_parser(
        "import",
        help="pre-seed a model version (air-gapped installs)",
        description="Verify a published version (model.json and the ONNX file beside it), "
        "store it in the state dir's cache and make it the model's last-known-good version: "
        "the daemon starts on it without a network (with lifecycle.manifest set).",
    )
    seed.add_argument("sidecar", type=Path, help="the version's model.json")
    seed.add_argument("--state-dir", type=Path, help="default: the settings' state_dir")
    seed.add_argument("--name", help="model name (default: the sidecar's name)")
    add_model_commands(sub)
    from agent.fleet.controller import add_fleet_commands

    add_fleet_commands(sub)
    return parser


def add_model_commands(sub: Any) -> None:
    model = sub.add_parser("model", help="package and score model versions").add_subparsers(
        dest="model_command", required=True
    )
    score = model.add_parser(
        "score",
        help="score an ONNX model on a golden set",
        description="Score an ONNX model on a golden set through the daemon's own pipeline: "
        "mAP50 for a detector (a folder or tar of images/*.jpg|png with YOLO labels/*.txt), "
        "accuracy for a tensor model (an .npz of its inputs with labels or expected_<output>). "
        "Progress on stderr; the result as one JSON line on stdout.",
    )
    pack = model.add_parser(
        "pack",
        help="build a version directory: model, sidecar, golden archive",
        description="Build a version directory from an ONNX file and a golden set: "
        "model.onnx, golden.tar (detectors) or golden.npz (tensor models), and model.json "
        "with the sha256s, labels (from the ONNX metadata) and the score measured now. "
        "Publish it with: cd OUT && oras push HOST/REPO:TAG model.onnx model.json golden.tar "
        "(golden.npz for a tensor model).",
    )
    for command in (score, pack):
        command.add_argument("onnx", type=Path, help="the ONNX model file")
        command.add_argument("golden", type=Path, help="golden set: folder, .tar or .npz")
        command.add_argument("--kind", choices=["auto", "yolov8", "tensor"], default="auto",
                             help="model kind (default: told from the graph)")
        command.add_argument("--providers", help="execution providers in order, e.g. cuda,cpu "
                             "(default: the daemon's settings)")
    pack.add_argument("--out", type=Path, required=True, help="the version directory to write")
    pack.add_argument("--int8", action="store_true",
                      help="also write model.int8.onnx: static int8 (QDQ) quantization "
                      "calibrated on the golden inputs as the daemon prepares them, scored on "
                      "the golden set (needs the pack extra: onnx, sympy)")
    pack.add_argument("--calibration", type=Path, default=None,
                      help="with --int8: a folder of extra calibration inputs (detectors: "
                      "*.jpg|png frames; tensor models: .npz files of the input arrays)")
    pack.add_argument("--name", default="", help="model name (default: the ONNX file's stem)")
    pack.add_argument("--version", dest="model_version", default="",
                      help="version (default: the first 12 hex digits of the sha256)")


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "host": args.host,
        "port": args.port,
        "state_dir": args.state_dir,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "runtime.providers": args.providers.split(",") if args.providers else None,
        "runtime.intra_op_threads": args.intra_op_threads,
        "batching.max_batch": args.max_batch,
        "batching.max_queue": args.max_queue,
    }
    out = {k: v for k, v in flags.items() if v is not None}
    if args.model:
        out["models"] = [parse_model_spec(m, "--model") for m in args.model]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "fleet":
        from agent.fleet.controller import fleet_main

        return fleet_main(args)
    if args.command == "model":
        from agent.packing import pack_command, score_command

        providers = args.providers.split(",") if args.providers else None
        if args.model_command == "score":
            return score_command(args.onnx, args.golden, args.kind, providers)
        return pack_command(args.onnx, args.golden, args.out, args.name, args.model_version,
                            args.kind, providers, args.int8, args.calibration)
    if args.command == "cache":
        from agent.models.cache_import import main_import

        try:
            state_dir = args.state_dir or load_settings().state_dir
        except SettingsError as exc:
            print(f"edge-agent: configuration error: {exc.message}", file=sys.stderr)
            return 2
        return main_import(args.sidecar, state_dir, args.name)
    if args.command == "serve":
        try:
            settings = load_settings(args.config, overrides=overrides_from_args(args))
        except SettingsError as exc:
            print(f"edge-agent: configuration error: {exc.message}", file=sys.stderr)
            return 2
        return serve(settings)
    return 2


def server_limits(settings: Settings) -> dict[str, Any]:
    """aiohttp's per-connection limits from ``settings.limits``."""
    limits = settings.limits
    return {
        # aiohttp arms this timer when a connection opens and re-arms it after each answer; it
        # closes a connection whose next request has not fully arrived by then.
        "keepalive_timeout": limits.idle_timeout_s,
        "max_line_size": limits.max_header_bytes,
        "max_field_size": limits.max_header_bytes,
        "max_headers": limits.max_headers,
        # After a refusal (413, 408) the rest of the body is not read at all: no lingering.
        "lingering_time": 0,
    }


def serve(settings: Settings) -> int:
    from agent.http import keys
    from agent.http.app import create_app
    from agent.http.server import run_app
    from agent.logs import setup_logging
    from agent.malloc import limit_arenas

    # Before any worker thread allocates: an arena is bound to a thread at its first malloc.
    arenas_limited = limit_arenas(settings.runtime.malloc_arenas)
    setup_logging(settings.log_level, settings.log_format)
    try:
        check_writable_dir(settings.state_dir, "state_dir")
    except EdgeError as exc:
        log.error("cannot start", extra={"error": exc.message})
        print(f"edge-agent: cannot start: {exc.message}", file=sys.stderr)
        return 2
    for model in settings.models:
        if not model.bundled and not model.path.is_file():  # a bundled one has no path
            log.error("model file not found", extra={"model": model.name, "path": str(model.path)})
    log.info(
        "starting",
        extra={
            "version": __version__,
            "host": settings.host,
            "port": settings.port,
            "models": [m.name for m in settings.models],
            "malloc_arenas": settings.runtime.malloc_arenas if arenas_limited else "default",
            "worker_nice": settings.runtime.worker_nice,
        },
    )
    app = create_app(settings, handle_signals=True)
    try:
        run_app(
            app,
            host=settings.host,
            port=settings.port,
            shutdown_timeout=settings.drain_timeout_s,
            access_log=logging.getLogger("aiohttp.access") if settings.log_requests else None,
            **server_limits(settings),
        )
    except OSError as exc:
        log.error(
            "cannot listen", extra={"host": settings.host, "port": settings.port, "error": str(exc)}
        )
        return 1
    except EdgeError as exc:  # a resource the settings ask for is not there (watchdog device)
        log.error("cannot start", extra={"error": exc.message})
        return 1
    if not app[keys.SERVICE].clean_shutdown:
        # A wedged session's thread can never be joined: exiting normally would hang forever
        # in the interpreter's thread join, so leave now and let the supervisor restart us.
        log.error("stopped with inference still running")
        logging.shutdown()
        os._exit(1)
    log.info("stopped")
    return 0
