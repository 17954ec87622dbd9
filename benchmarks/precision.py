"""``python -m benchmarks precision`` (also part of ``benchmarks run``): each precision path end
to end through the daemon, against fp32, side by side.

Per model (the bundled ``defects``, YOLOv8n at 320 with a golden set; the YOLOv8s-size fall
model, no golden set) and per precision path this node can run (``fp32``, ``int8``,
``fp32-openvino``, ``bf16``), one daemon each, all started up front and measured interleaved
(``benchmarks.compare``): the raw ``run`` median (``benchmarks.paths``), the single-stream p50
and p99 over HTTP, the saturation throughput (closed-loop cameras, ``benchmarks.saturation``),
and the golden-set score (defects) or the agreement with fp32's detections (fall), each with
its ratio to fp32. Then the cold start of a daemon whose precision choice is cached.

How each path is served, honestly:
- defects: the project's own ``edge-agent model pack --int8`` makes a version carrying an int8
  variant (calibrated on the golden frames as served) and the golden set; every daemon starts
  on that version (seeded with ``edge-agent cache import``) and pins its precision
  (``precision: fp32`` for the baseline: the version's auto choice would not be fp32), so the
  node's own gate checks each pin against fp32 on the golden set.
- fall: no golden set, so no gate can verify a variant. fp32 is the default daemon with
  ``runtime.openvino: true`` and ``precision: auto`` (it must stay fp32: no regression for
  models without a golden set); int8 is a model configured by ``path`` to the QDQ file
  (``inference.quantize``, calibrated on the test images); fp32-openvino and bf16 are pinned.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import cold_start, compare, paths
from benchmarks.common import DEFAULT_FRAME, JPEG, RESULTS, machine, write_report
from benchmarks.load import RETRY_AFTER, Load, closed_loop
from benchmarks.precision_report import (
    FP32,
    PEER,
    ColdStart,
    PathRow,
    PrecisionResult,
    render_section,
    targets,
)
from benchmarks.report import target_table
from benchmarks.saturation import closed_loop_step
from benchmarks.single import Peer, find_peer, interleaved_blocks
from inference import SessionConfig, YoloV8Detector
from inference.bundled import BUNDLE_ROOT
from inference.letterbox import to_input
from inference.quantize import IMAGE_SUFFIXES, quantize_int8
from tests.support import Daemon, cache_dir, fetch_fall_model

# precision (as the daemon names it) -> the row of benchmarks.paths that runs it raw
RAW_PATH = {FP32: paths.BASELINE, "int8": "ort-int8", "fp32-openvino": "openvino-fp32",
            "bf16": "openvino-bf16"}
SETTLE_S = 4.0


@dataclass
class ModelCase:
    name: str
    model: Path  # its fp32 file
    frame: Path
    overlays: dict[str, dict[str, Any]]  # precision -> daemon settings overlay
    int8: Path | None = None
    sidecar: Path | None = None  # the version to seed each daemon's cache with
    # precision -> what its daemon reports serving, where not the precision itself
    expect: dict[str, str] = field(default_factory=dict)


def pack_defects(workdir: Path) -> Path:
    """The bundled defects as a version carrying an int8 variant and its golden set, by the
    project's own ``model pack --int8``; returns its ``model.json``."""
    out = workdir / "defects-version"
    bundle = BUNDLE_ROOT / "defects"
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "model", "pack", str(bundle / "model.onnx"),
         str(bundle / "golden"), "--out", str(out), "--name", "m", "--version", "1.0.0-int8",
         "--int8", "--providers", "cpu"], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"model pack --int8 failed: {proc.stdout[-500:]}{proc.stderr[-500:]}")
    return out / "model.json"


def seed(sidecar: Path, state: Path) -> None:
    """The version as the model's last-known-good in ``state`` (``edge-agent cache import``)."""
    proc = subprocess.run([sys.executable, "-m", "agent", "cache", "import", str(sidecar),
                           "--state-dir", str(state), "--name", "m"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cache import failed: {proc.stdout[-500:]}{proc.stderr[-500:]}")


def quantize_fall(model: Path, dest: Path) -> int:
    """The fall model's int8 QDQ file, calibrated on the test images as the daemon serves them
    (it has no golden set); returns how many."""
    det = YoloV8Detector.load(model, SessionConfig(providers=("cpu",)))
    images = [p for p in sorted(paths.IMAGES.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    name = det.spec.input_name
    return quantize_int8(model, dest, ({name: to_input(det.preprocess(p.read_bytes()).blob)}
                                       for p in images))


def openvino(precision: str) -> dict[str, Any]:
    return {"runtime": {"openvino": True}, "models": {"precision": precision}}


def defects_case(workdir: Path) -> ModelCase:
    sidecar = pack_defects(workdir)
    manifest = workdir / "defects-fleet.json"
    manifest.write_text(json.dumps({"models": {"m": {"stable": {"source": sidecar.as_uri()}}}}))
    lifecycle = {"lifecycle": {"manifest": str(manifest), "watch_interval_s": 0,
                               "poll_interval_s": 3600}}
    overlays = {p: compare.merge(lifecycle, {"models": {"precision": p}})
                for p in (FP32, "int8")}
    overlays.update({p: compare.merge(lifecycle, openvino(p)) for p in ("fp32-openvino", "bf16")})
    return ModelCase("defects", sidecar.parent / "model.onnx",
                     BUNDLE_ROOT / "defects" / "golden" / "000.jpg", overlays,
                     int8=sidecar.parent / "model.int8.onnx", sidecar=sidecar)


def fall_case(workdir: Path, model: Path, notes: list[str]) -> ModelCase:
    int8 = workdir / "fall.int8.onnx"
    count = quantize_fall(model, int8)
    notes.append(f"fall int8: quantised by inference.quantize, calibrated on the {count} test "
                 "images (tests/fixtures/images, the frames its agreement is measured on); "
                 "served as a model configured by `path` to the QDQ file (no golden set: no "
                 "gate could verify it)")
    return ModelCase("fall (YOLOv8s-size)", model, DEFAULT_FRAME, {
        FP32: {"runtime": {"openvino": True}},  # auto: must stay fp32 with no golden set
        "int8": {"models": {"path": str(int8)}},
        "fp32-openvino": openvino("fp32-openvino"),
        "bf16": openvino("bf16"),
    }, int8=int8, expect={"int8": FP32})  # a path model: the daemon calls its file fp32


async def serving(daemon: Daemon) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(daemon.url + "/v1/models") as resp:
        models = (await resp.json())["models"]
    return next(m for m in models if m["name"] == "m")


async def measure_case(case: ModelCase, threads: int, rounds: int, step_s: float,
                       settle_s: float, cameras: int, peer: Peer | None,
                       workdir: Path) -> tuple[list[PathRow], list[str]]:
    builders, why = paths.path_builders(case.int8)
    runnable = [p for p, raw in RAW_PATH.items() if raw in builders]
    rows = {p: PathRow(case.name, p, expect=case.expect.get(p, "")) for p in runnable}
    print(f"{case.name}: raw runs and scores, {', '.join(runnable)} ...", flush=True)
    raw_rows = await asyncio.to_thread(paths.measure_model, case.name, case.model,
                                       case.frame.read_bytes(), builders, threads, rounds, 0)
    by_raw = {r.path: r for r in raw_rows}
    for p, row in rows.items():
        raw = by_raw[RAW_PATH[p]]
        row.run_ms, row.score, row.metric = raw.run_ms, raw.score, raw.metric
        row.agreement, row.note = raw.agreement, raw.note
    wd = workdir / case.name.split()[0]
    wd.mkdir(parents=True)
    variants = [compare.Variant(p, case.overlays[p]) for p in runnable]
    compare.write_configs(variants, case.model, threads, wd)
    if case.sidecar is not None:
        for v in variants:
            seed(case.sidecar, wd / v.name)
    data = case.frame.read_bytes()
    try:
        print(f"{case.name}: starting {len(variants)} daemons ...", flush=True)
        await compare.start(variants, wd)
        for v in variants:
            assert v.daemon is not None
            info = await serving(v.daemon)
            row = rows[v.name]
            row.serving = str(info.get("precision", ""))
            if not row.served_as_meant():
                row.note = ((info.get("precision_choice") or {}).get("reason")
                            or f"serves {row.serving}")
            elif row.expect:
                row.note = "the QDQ file as a model configured by `path` (no gate)"
        print(f"{case.name}: single stream, interleaved ...", flush=True)
        async with aiohttp.ClientSession() as http:
            measures = compare.detect_measures(http, variants, data)
            if peer is not None:
                measures[PEER] = functools.partial(asyncio.to_thread, peer.ask, "go")
            single = await interleaved_blocks(measures, rounds)
        for p, row in rows.items():
            row.e2e = single[p]
        print(f"{case.name}: saturation, {cameras} closed-loop cameras each ...", flush=True)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            for v in variants:
                assert v.daemon is not None
                # Load first, unmeasured: the adaptive layout turns narrow meanwhile (a new
                # session, seconds for a big model), then the step: a switch inside it is noted.
                await closed_loop(http, v.daemon.url + "/v1/models/m/detect", data, JPEG,
                                  cameras, settle_s, Load())
                step = await closed_loop_step(http, v.daemon, data, cameras, RETRY_AFTER,
                                              step_s, settle_s=0.5)
                rows[v.name].fps = step["fps"]
                if step["switched"]:
                    rows[v.name].note = "; ".join(filter(None, [
                        rows[v.name].note, "the thread layout switched during the saturation "
                        "step: more --settle-s"]))
                print(f"  {v.name:>14}: {step['fps']:5.1f} frames/s, p50 {step['p50']:.0f} ms, "
                      f"503s {step['refused']}", flush=True)
    finally:
        for v in variants:
            if v.daemon is not None:
                v.daemon.stop()
    out = list(rows.values())
    if peer is not None:
        out.append(PathRow(case.name, PEER, e2e=single[PEER],
                           note="in-process imdecode + predict (no HTTP), OpenVINO IR of the "
                                "same ONNX at its default CPU precision"))
    return out, [f"{case.name}: {n}" for n in why]


async def cached_cold_start(case: ModelCase, threads: int, workdir: Path) -> ColdStart:
    """defects with its golden set, ``precision: auto`` and ``runtime.openvino: true``: the
    first start measures every path and stores the choice; then three cold starts from that
    state dir, and one more to read that the choice was reused (``measured: cached``)."""
    assert case.sidecar is not None
    wd = workdir / "cold"
    wd.mkdir(parents=True)
    # the defects daemons' settings (the manifest naming the packed version), unpinned
    overlay = compare.merge(case.overlays["int8"], {"runtime": {"openvino": True},
                                                    "models": {"precision": "auto"}})
    variant = compare.Variant("auto", overlay)
    compare.write_configs([variant], case.model, threads, wd)
    state = wd / "state"
    seed(case.sidecar, state)
    first = Daemon(["--config", str(variant.config), "--state-dir", str(state)])
    try:
        await first.wait_ready(timeout=300)
        chosen = await serving(first)
    finally:
        first.stop()
    seconds = await cold_start.cold_starts(variant.config, state, 3)
    again = Daemon(["--config", str(variant.config), "--state-dir", str(state)])
    try:
        await again.wait_ready(timeout=120)
        reused = (await serving(again)).get("precision_choice") or {}
    finally:
        again.stop()
    return ColdStart(seconds, str(chosen.get("precision", "")), str(reused.get("measured", "")),
                     str((chosen.get("precision_choice") or {}).get("reason", "")))


def peer_model(python: str, model: Path, out: Path, imgsz: int) -> Path:
    """The model as an OpenVINO IR folder Ultralytics loads as its OpenVINO backend (what its
    ``export(format="openvino")`` writes: ``<name>.xml`` and ``metadata.yaml``), converted from
    the same ONNX by OpenVINO in the peer's interpreter: Ultralytics exports from a ``.pt``
    only, and these models are ONNX files."""
    det = YoloV8Detector.load(model, SessionConfig(providers=("cpu",)))
    folder = out / f"{model.stem}_openvino_model"
    folder.mkdir(parents=True)
    meta = {"task": "detect", "batch": 1, "imgsz": [imgsz, imgsz], "stride": 32,
            "names": det.names}
    (folder / "metadata.yaml").write_text(json.dumps(meta))  # JSON is YAML
    script = ("import sys, openvino as ov; "
              "ov.save_model(ov.convert_model(sys.argv[1]), sys.argv[2], compress_to_fp16=False)")
    proc = subprocess.run([python, "-c", script, str(model), str(folder / f"{model.stem}.xml")],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"the peer's interpreter cannot convert {model.name} to an OpenVINO "
                           f"IR (pip install openvino there): {last}")
    return folder


def fresh(workdir: Path) -> None:
    shutil.rmtree(workdir, ignore_errors=True)  # no state (cache, choices) from a last run
    workdir.mkdir(parents=True)


async def measure(workdir: Path, threads: int, rounds: int, step_s: float, settle_s: float,
                  cameras: int,
                  peer_python: str | None, models: list[str]) -> PrecisionResult:
    result = PrecisionResult()
    await asyncio.to_thread(fresh, workdir)
    cases = []
    if "defects" in models:
        print("packing defects with --int8 ...", flush=True)
        cases.append(await asyncio.to_thread(defects_case, workdir))
        result.golden.add(cases[-1].name)
    if "fall" in models:
        fall = await asyncio.to_thread(fetch_fall_model, cache_dir())
        if fall is None:
            result.notes.append("the YOLOv8s-size fall model could not be fetched: left out")
        else:
            print("quantising the fall model ...", flush=True)
            cases.append(await asyncio.to_thread(fall_case, workdir, fall, result.notes))
    python, why = find_peer(peer_python)
    if why:
        result.notes.append(why.replace("the peer is skipped", "the peer row is left out"))
    for case in cases:
        peer = None
        if python is not None:
            imgsz = YoloV8Detector.load(case.model, SessionConfig(providers=("cpu",))).spec.input_h
            try:
                folder = peer_model(python, case.model, workdir / "peer" / case.name.split()[0],
                                    imgsz)
                peer = Peer(python, folder, case.frame, imgsz)
            except RuntimeError as exc:
                result.notes.append(f"{case.name}: peer row left out: {exc}")
        try:
            rows, notes = await measure_case(case, threads, rounds, step_s, settle_s, cameras,
                                             peer, workdir)
            result.rows += rows
            result.notes += notes
        finally:
            if peer is not None:
                peer.close()
    defects = next((c for c in cases if c.sidecar is not None), None)
    if defects is not None:
        print("cold start with the precision choice cached ...", flush=True)
        result.cold = await cached_cold_start(defects, threads, workdir)
    return result


MODELS = ("defects", "fall")


def parse_models(value: str) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected some of {','.join(MODELS)}, got {value!r}")
    return names


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--models", type=parse_models, default=list(MODELS),
                    help="defects, fall or both (default: defects,fall)")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads; "
                    "0: usable cores")
    ap.add_argument("--rounds", type=int, default=30, help="raw runs and single-stream rounds "
                    "per path")
    ap.add_argument("--step-s", type=float, default=8.0, help="seconds of saturation per path")
    ap.add_argument("--settle-s", type=float, default=SETTLE_S, help="seconds of load before "
                    "each saturation step is measured (the thread layout's switch to narrow)")
    ap.add_argument("--cameras", type=int, default=0, help="closed-loop cameras for "
                    "saturation; 0: twice the usable cores")
    ap.add_argument("--peer-python", help="the interpreter Ultralytics and openvino are "
                    "installed in (default: $EDGE_BENCH_PEER_PYTHON, this one, "
                    "/opt/refvenv/bin/python)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edge-agent-precision"))
    ap.add_argument("--out", type=Path, help="the report (default: "
                    "benchmarks/results/<date>-<host>-precision.md)")


def cameras_for(requested: int, threads: int) -> int:
    return requested or 2 * threads


def main(args: argparse.Namespace) -> int:
    threads = args.threads or SessionConfig().threads()
    cameras = cameras_for(args.cameras, threads)
    result = asyncio.run(measure(args.workdir, threads, args.rounds, args.step_s, args.settle_s,
                                 cameras, args.peer_python, args.models))
    info = machine()
    text = "\n".join([
        f"# Precision paths end to end, {info['date']}", "",
        f"Machine: {info['cpu']}, {info['cores']} usable cores, onnxruntime "
        f"{info['onnxruntime']}, Python {info['python']}. {threads} threads; {args.rounds} "
        "raw runs and single-stream rounds per path.",
        *render_section(result, cameras, args.step_s, args.settle_s), "",
        *target_table(targets(result)),
    ]) + "\n"
    host = info["host"] or "host"
    write_report(text, args.out or RESULTS / f"{info['date']}-{host}-precision.md")
    return 0
