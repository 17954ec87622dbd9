"""``python -m benchmarks paths``: the CPU execution paths side by side, per model.

A path is a way to run the same model on this CPU: ONNX Runtime's CPU provider at fp32 (what
the daemon runs by default), OpenVINO at fp32 and at bf16 (where the CPU has bf16), and ONNX
Runtime on an int8 QDQ file of the model (``--int8 MODEL=QDQ.onnx``). For each model and path:
the median of a raw ``run`` of one letterboxed frame (the paths interleaved in blocks, so
machine noise hits all alike), its ratio to ONNX Runtime's fp32, the golden-set score where the
model has a golden set (a sidecar ``model.json`` beside it naming one, like the bundled
models'), and the agreement (F1 of matched detections, ``inference.agreement``) with ONNX
Runtime's fp32 detections on the frames. Ultralytics' own predictor (the peer, imdecode +
predict, so not a raw run) is added where it is installed.

Default models: the bundled ``defects`` (YOLOv8n at 320) and the YOLOv8s-size fall detector
the tests fetch (``tests.support.fetch_fall_model``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from benchmarks.common import DEFAULT_FRAME, RESULTS, machine, write_report
from benchmarks.single import Peer, find_peer
from inference import SessionConfig, YoloV8Detector, file_digest
from inference.agreement import detection_agreement
from inference.bundled import BUNDLE_ROOT
from inference.errors import EdgeError
from inference.evaluation import ScoredBox
from inference.golden import load_detection_golden, score_detections
from inference.letterbox import to_input
from inference.openvino_engine import cpu_has_bf16, create_openvino_session, openvino_available
from inference.session import LoadedSession, create_session
from inference.yolo import Thresholds
from tests.support import cache_dir, fetch_fall_model

BASELINE = "ort-cpu-fp32"
IMAGES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "images"
# path name -> (model file, threads) -> session
Builder = Callable[[Path, int], LoadedSession]


def path_builders(int8: Path | None) -> tuple[dict[str, Builder], list[str]]:
    """The paths this node can run for a model (an explicit registry), and why any is left out."""
    out: dict[str, Builder] = {
        BASELINE: lambda p, t: create_session(p, SessionConfig(providers=("cpu",),
                                                               intra_op_threads=t)),
    }
    notes: list[str] = []
    if openvino_available():
        out["openvino-fp32"] = lambda p, t: create_openvino_session(p, "fp32", t, file_digest(p))
        if cpu_has_bf16():
            out["openvino-bf16"] = lambda p, t: create_openvino_session(p, "bf16", t,
                                                                        file_digest(p))
        else:
            notes.append("openvino-bf16: this CPU has no bf16 instructions")
    else:
        notes.append("openvino: not installed (pip install '.[openvino]')")
    if int8 is not None:
        qdq = int8
        out["ort-int8"] = lambda p, t: create_session(qdq, SessionConfig(providers=("cpu",),
                                                                         intra_op_threads=t))
    return out, notes


@dataclass
class Row:
    model: str
    path: str
    run_ms: float | None = None
    score: float | None = None
    metric: str = ""
    agreement: float | None = None
    note: str = ""


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def golden_of(model: Path) -> tuple[Path, Thresholds] | None:
    """The detection golden set a sidecar beside the model names, with its scoring settings."""
    sidecar = model.with_name("model.json")
    if not sidecar.is_file():
        return None
    raw = json.loads(sidecar.read_text()).get("golden") or {}
    if not isinstance(raw.get("file"), str):
        return None
    scoring = raw.get("scoring") or {}
    return model.parent / raw["file"], Thresholds(conf=float(scoring.get("conf", 0.001)),
                                                  iou=float(scoring.get("iou", 0.7)))


def timed_blocks(runs: dict[str, Callable[[], object]], rounds: int, block: int = 5,
                 settle: int = 2, gap_s: float = 0.2) -> dict[str, list[float]]:
    """``rounds`` timings of each, in blocks of ``settle + block`` back-to-back calls (the first
    ``settle`` not counted), the blocks' order rotating (as ``benchmarks.single`` does).

    ``gap_s`` of idle before each block: ONNX Runtime's and OpenVINO's worker threads spin for
    a while after a run, and on 2 cores the previous path's spinning slowed the next block's
    runs (ORT fp32 measured 22-34 ms interleaved without the gap, 14 ms with it or alone)."""
    names = list(runs)
    out: dict[str, list[float]] = {n: [] for n in names}
    for b in range(-(-rounds // block)):
        shift = b % len(names)
        for name in names[shift:] + names[:shift]:
            time.sleep(gap_s)
            for i in range(settle + block):
                t0 = time.perf_counter()
                runs[name]()
                took = time.perf_counter() - t0
                if i >= settle and len(out[name]) < rounds:
                    out[name].append(took)
    return out


def measure_model(name: str, model: Path, frame: bytes, builders: dict[str, Builder],
                  threads: int, rounds: int, golden_frames: int) -> list[Row]:
    detectors: dict[str, YoloV8Detector] = {}
    rows: dict[str, Row] = {}
    for path, build in builders.items():
        rows[path] = Row(name, path)
        try:
            detectors[path] = YoloV8Detector(build(model, threads))
        except EdgeError as exc:
            rows[path].note = exc.message
    base = detectors.get(BASELINE)
    if base is None:
        return list(rows.values())
    blob = to_input(base.preprocess(frame).blob)
    feed = {base.spec.input_name: blob}
    out_name = base.loaded.session.get_outputs()[0].name
    def runner(det: YoloV8Detector) -> Callable[[], object]:
        return lambda: det.loaded.session.run([out_name], feed)

    timings = timed_blocks({p: runner(d) for p, d in detectors.items()}, rounds)
    for p, values in timings.items():
        rows[p].run_ms = 1000 * median(values)
    golden = golden_of(model)
    if golden is not None:
        frames = load_detection_golden(golden[0])[:golden_frames or None]
        thresholds = golden[1]
        for p, det in detectors.items():
            def boxes(data: bytes, det: YoloV8Detector = det) -> list[ScoredBox]:
                return [ScoredBox(d.class_id, d.score, d.box) for d in det.detect(data, thresholds)]

            rows[p].score = score_detections(frames, boxes).map
            rows[p].metric = f"mAP50 ({len(frames)} frames)"
        images = [f.data for f in frames]
    else:
        images = [p.read_bytes() for p in sorted(IMAGES.glob("*")) if p.suffix in (".jpg", ".png")]
    reference = [base.detect(image) for image in images]
    for p, det in detectors.items():
        scores = [detection_agreement(r, det.detect(image))
                  for r, image in zip(reference, images, strict=True)]
        rows[p].agreement = sum(scores) / len(scores)
    return list(rows.values())


def peer_row(name: str, model: Path, frame_path: Path, imgsz: int, rounds: int,
             python: str) -> Row:
    peer = Peer(python, model, frame_path, imgsz)
    try:
        for _ in range(2):
            peer.ask("go")
        took = [peer.ask("go") for _ in range(rounds)]
    finally:
        peer.close()
    return Row(name, "ultralytics (peer)", 1000 * median(took),
               note="imdecode + letterbox + run + NMS (not a raw run); its own ORT CPU default")


def render(result: Result, info: dict[str, str], threads: int, rounds: int) -> str:
    lines = [
        f"# CPU execution paths, {info['date']}",
        "",
        f"Machine: {info['cpu']}, {info['cores']} usable cores, onnxruntime "
        f"{info['onnxruntime']}, Python {info['python']}. {threads} threads per run; "
        f"median of {rounds} raw runs of one frame (batch 1) per path, interleaved in blocks.",
        "",
        "| model | path | run p50 ms | vs ORT CPU fp32 | golden score | Δ score | agreement "
        "with ORT fp32 | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    base = {r.model: r for r in result.rows if r.path == BASELINE}
    for r in result.rows:
        b = base.get(r.model)
        ratio = (f"{b.run_ms / r.run_ms:.2f}x" if b and b.run_ms and r.run_ms and
                 r.path != "ultralytics (peer)" else "—")
        score = "—" if r.score is None else f"{r.score:.4f} {r.metric}"
        delta = ("—" if r.score is None or b is None or b.score is None
                 else f"{r.score - b.score:+.4f}")
        agree = "—" if r.agreement is None else f"{r.agreement:.3f}"
        run = "—" if r.run_ms is None else f"{r.run_ms:.1f}"
        lines.append(f"| {r.model} | {r.path} | {run} | {ratio} | {score} | {delta} | {agree} "
                     f"| {r.note} |")
    lines += ["", "vs ORT CPU fp32: its median run time over the path's (above 1: faster).", ""]
    lines += [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def default_models(notes: list[str]) -> list[tuple[str, Path, Path]]:
    """(name, model, frame to time): the bundled defects and the YOLOv8s-size fall model."""
    defects = BUNDLE_ROOT / "defects"
    out = [("defects", defects / "model.onnx", defects / "golden" / "000.jpg")]
    fall = fetch_fall_model(cache_dir())
    if fall is None:
        notes.append("the YOLOv8s-size fall model could not be fetched: left out")
    else:
        out.append(("fall (YOLOv8s-size)", fall, DEFAULT_FRAME))
    return out


def parse_model(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {value!r}")
    return name, Path(path)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", action="append", default=[], type=parse_model,
                    metavar="NAME=PATH", help="a YOLOv8 ONNX file (repeatable; default: the "
                    "bundled defects and the YOLOv8s-size fall model); a model.json beside it "
                    "naming a golden set scores it")
    ap.add_argument("--int8", action="append", default=[], type=parse_model,
                    metavar="NAME=QDQ.onnx", help="an int8 QDQ file of model NAME: adds ORT int8")
    ap.add_argument("--frame", type=Path, help="the frame to time (default: the model's own "
                    "golden frame, else the 1080p test image)")
    ap.add_argument("--threads", type=int, default=0, help="threads per run; 0: usable cores")
    ap.add_argument("--rounds", type=int, default=30, help="timed runs per path")
    ap.add_argument("--golden-frames", type=int, default=0,
                    help="score on the first N golden frames only; 0: all")
    ap.add_argument("--peer-python", help="the interpreter Ultralytics is installed in")
    ap.add_argument("--out", type=Path, help="the report (default: "
                    "benchmarks/results/<date>-<host>-paths.md)")


def main(args: argparse.Namespace) -> int:
    threads = args.threads or SessionConfig().threads()
    result = Result()
    models = ([(n, p, args.frame or DEFAULT_FRAME) for n, p in args.model] if args.model
              else default_models(result.notes))
    if args.frame:
        models = [(n, p, args.frame) for n, p, _ in models]
    int8 = dict(args.int8)
    python, why = find_peer(args.peer_python)
    if why:
        result.notes.append(why)
    for name, model, frame in models:
        builders, notes = path_builders(int8.get(name))
        result.notes += [f"{name}: {n}" for n in notes]
        print(f"{name}: {', '.join(builders)} ...", flush=True)
        result.rows += measure_model(name, model, frame.read_bytes(), builders, threads,
                                     args.rounds, args.golden_frames)
        if python is not None:
            imgsz = YoloV8Detector.load(model, SessionConfig(providers=("cpu",))).spec.input_h
            result.rows.append(peer_row(name, model, frame, imgsz, args.rounds, python))
    info = machine()
    text = render(result, info, threads, args.rounds)
    write_report(text, args.out or RESULTS / f"{info['date']}-{info['host'] or 'host'}-paths.md")
    return 0
