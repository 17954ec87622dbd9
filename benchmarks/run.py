"""``python -m benchmarks run``: every figure of the performance targets in README's Performance
section, measured in one run.

The floor (raw ``session.run`` with the daemon's thread settings), the daemon end to end, and the
peer (Ultralytics ``cv2.imdecode`` + ``YOLO(onnx).predict``, in its own interpreter) are
interleaved round by round, so machine noise hits all three alike. Then, against the same
daemon process: an open-loop sweep of cameras past saturation, 3x overload, a model swap under
load, the summary's size; cold starts from the on-disk state; and last (``benchmarks.precision``,
``--skip-precision`` leaves it out) each precision path end to end against fp32. Results go to
``benchmarks/results/<date>-<host>.md`` with PNG plots beside it.

This module only sets up and orchestrates; each job is a module of its own: ``single``,
``saturation``, ``overload``, ``swap``, ``summary_size``, ``cold_start``, and ``report`` writes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent.settings import BatchingSettings
from benchmarks import (
    bare,
    cold_start,
    overload,
    precision,
    saturation,
    single,
    summary_size,
    swap,
)
from benchmarks.common import JPEG, RESULTS, TOKEN, machine, ms
from benchmarks.load import Load, closed_loop, proc_stats
from benchmarks.report import Report, plot, render
from benchmarks.single import Peer, find_peer
from inference import SessionConfig, YoloV8Detector
from inference.bundled import BUNDLE_ROOT
from tests.support import Daemon


def write_config(workdir: Path, model: Path, threads: int) -> tuple[Path, Path]:
    manifest = workdir / "fleet.json"
    manifest.write_text(json.dumps({"models": {"fusion": {
        "stable": {"source": (BUNDLE_ROOT / "fusion" / "model.json").as_uri()}}}}))
    (workdir / "token").write_text(TOKEN)
    config = workdir / "config.yaml"
    config.write_text(json.dumps({
        "models": [{"name": "m", "path": str(model)}, {"name": "fusion", "bundled": "fusion"}],
        "runtime": {"intra_op_threads": threads, "preprocess_threads": threads},
        "validate_golden": True,
        "admin": {"token_file": str(workdir / "token")},
        "lifecycle": {"manifest": str(manifest), "watch_interval_s": 0, "poll_interval_s": 3600},
    }))
    return config, manifest


async def bundled_peak_rss(workdir: Path, data: bytes, seconds: float) -> int:
    """Peak RSS of a daemon serving the two bundled models (its defaults), four closed-loop
    cameras on the detector."""
    daemon = Daemon(["--state-dir", str(workdir / "state-bundled")])
    rss: list[int] = []
    try:
        await daemon.wait_ready(timeout=300)

        async def watch() -> None:
            while True:
                rss.append(proc_stats(daemon.proc.pid)["rss"])
                await asyncio.sleep(0.25)

        watcher = asyncio.create_task(watch())
        async with aiohttp.ClientSession() as http:
            await closed_loop(http, daemon.url + "/v1/models/defects/detect", data, JPEG, 4,
                              seconds, Load())
        watcher.cancel()
    finally:
        daemon.stop()
    return max(rss, default=0)


@dataclass
class Setup:
    data: bytes
    model: Path
    frame: Path
    threads: int
    workdir: Path
    config: Path
    manifest: Path
    det: YoloV8Detector
    peer: Peer | None


def prepare(args: argparse.Namespace, report: Report) -> Setup:
    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)  # a fresh state dir: no cache from a last run
    workdir.mkdir(parents=True)
    config, manifest = write_config(workdir, args.model, args.threads)
    det = YoloV8Detector.load(
        args.model, SessionConfig(providers=("cpu",), intra_op_threads=args.threads)
    )
    python, why = find_peer(args.peer_python)
    if why:
        report.notes.append(why)
        print(why)
    peer = Peer(python, args.model, args.frame, det.spec.input_h) if python else None
    return Setup(Path(args.frame).read_bytes(), args.model, args.frame, args.threads, workdir,
                 config, manifest, det, peer)


async def run(args: argparse.Namespace, report: Report, setup: Setup) -> None:
    data, model, threads, workdir = setup.data, setup.model, setup.threads, setup.workdir
    config, manifest, det, peer = setup.config, setup.manifest, setup.det, setup.peer
    state = workdir / "state"
    daemon = Daemon(["--config", str(config), "--state-dir", str(state)])
    try:
        await daemon.wait_ready(timeout=300)
        print("single stream, interleaved ...", flush=True)
        report.single = await single.single_stream(daemon, det, data, peer, args.rounds)
        peer_rss = await asyncio.to_thread(peer.ask, "rss") if peer else None
        print("closed-loop cameras ...", flush=True)
        report.closed_loop = await saturation.closed_loop_sweep(daemon, data, args.step_s)
        print("open-loop sweep ...", flush=True)
        report.sweep, open_rss = await saturation.sweep(
            daemon, data, args.fps, args.cameras, args.step_s
        )
        sustainable = saturation.sustainable(report.sweep)
        print("overload ...", flush=True)
        over = await overload.overload(daemon, data, 3 * sustainable, 10)
        print("swap under load ...", flush=True)
        swapped = await swap.swap_under_load(daemon, data, manifest, workdir, 0.5 * sustainable)
        summary_bytes = await summary_size.summary_bytes(daemon)
    finally:
        daemon.stop()
    print("cold starts ...", flush=True)
    colds = await cold_start.cold_starts(config, state, 3)
    print("pipeline floor and bare process ...", flush=True)
    report.floor = await asyncio.to_thread(bare.measure, model, setup.frame, threads, "per-core")
    report.bare = await asyncio.to_thread(bare.measure, model, setup.frame, threads, "shared")
    print("bundled models' memory ...", flush=True)
    report.bundled_peak_rss = await bundled_peak_rss(workdir, data, args.step_s)
    if not args.skip_precision:
        print("precision paths end to end ...", flush=True)
        cameras = precision.cameras_for(0, threads)
        result = await precision.measure(workdir / "precision", threads, args.rounds,
                                         args.step_s, precision.SETTLE_S, cameras,
                                         args.peer_python, list(precision.MODELS))
        report.precision = precision.render_section(result, cameras, args.step_s,
                                                    precision.SETTLE_S)
        report.targets += precision.targets(result)

    report.targets += [
        *single.targets(report.single),
        *saturation.targets(report, threads, BatchingSettings().max_queue, open_rss, peer_rss),
        cold_start.target(colds),
        *overload.targets(over, ms(report.single["daemon"], 99)),
        *swap.targets(swapped),
        summary_size.target(summary_bytes),
    ]


def main(args: argparse.Namespace) -> int:
    report = Report(machine())
    setup = prepare(args, report)
    try:
        asyncio.run(run(args, report, setup))
    finally:
        if setup.peer is not None:
            setup.peer.close()
    text = render(report, Path(args.model), Path(args.frame), args.rounds)
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"{report.machine['date']}-{report.machine['host'] or 'host'}"
    stem.with_suffix(".md").write_text(text)
    plots = plot(report, stem)
    print(text)
    print(f"written: {stem.with_suffix('.md')}" + "".join(f", {p.name}" for p in plots))
    return 0
