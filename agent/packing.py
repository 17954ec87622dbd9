"""``edge-agent model score`` and ``edge-agent model pack``: what a publishing pipeline runs.

``score`` measures an ONNX model on a golden set (a folder, a tar archive or an ``.npz``);
``pack`` builds a version directory from an ONNX file and a golden set — ``model.onnx``, the
golden archive and ``model.json`` (sha256, labels, the golden set's sha256, metric and the score
measured here) — ready for ``oras push host/repo:tag model.onnx model.json golden.tar``.
``pack --int8`` adds ``model.int8.onnx``, a statically quantised QDQ variant calibrated on the
golden inputs made exactly as the daemon makes them, scored on the same set; the sidecar's
``variants`` lists both files with their sha256 and score (push the variant file too).

Both score through the daemon's own code: the session built from the daemon's settings, the
kind adapter's scoring loop, the runner's pre- and post-processing (what a swap gates a
candidate with), so the packed score is the score a node measures on the same provider.
Progress goes to stderr, the result to stdout as one JSON line; a user error (an unreadable
golden set, a model that does not load) is one ``edge-agent: ...`` line and exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from agent.kinds import direct_scoring, kind_adapters
from agent.loading import session_config
from agent.settings_loader import SettingsError, load_settings
from inference.errors import EdgeError, GoldenSetError
from inference.files import atomic_copy, atomic_write
from inference.golden import METRICS, SCORING_DEFAULTS, GoldenSpec, load_detection_golden
from inference.golden_pack import write_detection_archive, write_tensor_archive
from inference.kinds import AUTO, Servable, model_kinds, sniff_kind
from inference.quantize import detector_inputs, quantize_int8, tensor_inputs
from inference.session import file_digest
from inference.tensor import TensorModel
from inference.variants import FP32
from inference.yolo import YoloV8Detector

SIDECAR = "model.json"
MODEL_FILE = "model.onnx"
GOLDEN_FILES = {"yolov8": "golden.tar", "tensor": "golden.npz"}
INT8_FILE = "model.int8.onnx"


class PackError(EdgeError):
    """The command cannot run as asked: no model file there, bad settings."""


@dataclass(frozen=True)
class Loaded:
    kind: str
    runner: Servable
    digest: str


def load_model(path: Path, kind: str, providers: list[str] | None) -> Loaded:
    """The model as the daemon loads it (its settings' session configuration)."""
    if not path.is_file():
        raise PackError(f"model file {path} not found")
    overrides: dict[str, Any] = {"runtime.providers": providers} if providers else {}
    try:
        settings = load_settings(overrides=overrides)
    except SettingsError as exc:
        raise PackError(f"configuration error: {exc.message}") from exc
    kind = sniff_kind(path) if kind == AUTO else kind
    digest = file_digest(path)
    runner = model_kinds()[kind](path, session_config(settings), None, digest)
    return Loaded(kind, runner, digest)


def check_golden_kind(kind: str, golden: Path) -> None:
    if not golden.exists():
        raise GoldenSetError(f"golden set {golden} does not exist")
    is_npz = golden.suffix.lower() == ".npz"
    if kind == "tensor" and not is_npz:
        raise GoldenSetError(f"golden set {golden}: a tensor model's golden set is an .npz of "
                             f"its inputs with labels or expected_<output> arrays")
    if kind == "yolov8" and is_npz:
        raise GoldenSetError(f"golden set {golden}: a yolov8 model's golden set is a folder or "
                             f"tar of images/*.jpg|png with YOLO labels/*.txt")


def score(loaded: Loaded, golden: GoldenSpec, label: str) -> float:
    """``loaded``'s score on ``golden`` through the kind adapter's loop; progress on stderr."""
    step = {"last": -1}

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // total
        if tenth != step["last"]:
            step["last"] = tenth
            print(f"scoring {label}: {done}/{total}", file=sys.stderr, flush=True)

    detect, infer = direct_scoring(loaded.runner)
    adapter = kind_adapters()[loaded.kind]
    return asyncio.run(adapter.score(loaded.runner, golden, detect, infer, progress))


def score_command(model: Path, golden: Path, kind: str, providers: list[str] | None) -> int:
    def run() -> dict[str, Any]:
        loaded = load_model(model, kind, providers)
        check_golden_kind(loaded.kind, golden)
        spec = GoldenSpec(golden, METRICS[loaded.kind])
        value = score(loaded, spec, golden.name)
        return {"model": str(model), "sha256": loaded.digest, "kind": loaded.kind,
                "metric": spec.metric, "score": value}

    return _main(run)


def pack_command(model: Path, golden: Path, out: Path, name: str, version: str, kind: str,
                 providers: list[str] | None, int8: bool = False,
                 calibration: Path | None = None) -> int:
    def run() -> dict[str, Any]:
        if calibration is not None and not int8:
            raise PackError("--calibration is for --int8")
        if calibration is not None and not calibration.is_dir():
            raise PackError(f"calibration folder {calibration} not found")
        loaded = load_model(model, kind, providers)
        check_golden_kind(loaded.kind, golden)
        sidecar = pack(loaded, model, golden, out, name or model.stem, version,
                       int8=int8, calibration=calibration, providers=providers)
        result = {"out": str(out), "name": sidecar["name"], "version": sidecar["version"],
                  "sha256": sidecar["sha256"], "metric": sidecar["golden"]["metric"],
                  "score": sidecar["golden"]["score"]}
        if "variants" in sidecar:
            result["variants"] = {v["precision"]: v["score"] for v in sidecar["variants"]}
        return result

    return _main(run)


def pack(loaded: Loaded, model: Path, golden: Path, out: Path, name: str,
         version: str, int8: bool = False, calibration: Path | None = None,
         providers: list[str] | None = None) -> dict[str, Any]:
    """Write the version directory ``out``: golden archive, model (and its int8 variant),
    then the sidecar (last, so a directory with a ``model.json`` is complete). Returns the
    sidecar."""
    archive = out / GOLDEN_FILES[loaded.kind]
    if loaded.kind == "yolov8":
        frames = load_detection_golden(golden)
        write_detection_archive(golden, frames, archive)
        items = len(frames)
    else:
        write_tensor_archive(golden, archive)
        items = 0
    scoring = {k: v for k, v in SCORING_DEFAULTS.items()
               if (k in ("conf", "iou")) == (loaded.kind == "yolov8")}
    spec = GoldenSpec(archive, METRICS[loaded.kind], scoring=scoring)
    value = score(loaded, spec, archive.name)
    atomic_copy(model, out / MODEL_FILE)
    adapter = kind_adapters()[loaded.kind]
    sidecar: dict[str, Any] = {
        "name": name,
        "version": version or loaded.digest[:12],
        "kind": loaded.kind,
        "file": MODEL_FILE,
        "sha256": loaded.digest,
        "size_bytes": (out / MODEL_FILE).stat().st_size,
        "labels": list(adapter.labels(loaded.runner)),
    }
    if isinstance(loaded.runner, YoloV8Detector):
        sidecar["imgsz"] = [loaded.runner.spec.input_h, loaded.runner.spec.input_w]
    sidecar["golden"] = {
        "file": archive.name,
        "sha256": file_digest(archive),
        "metric": spec.metric,
        "score": value,
        "scoring": scoring,
        **({"frames": items} if items else {}),
    }
    if int8:
        variant = make_int8(loaded, model, archive, out / INT8_FILE, spec, calibration,
                            providers)
        sidecar["variants"] = [
            {"precision": FP32, "file": MODEL_FILE, "sha256": loaded.digest, "score": value},
            variant,
        ]
    atomic_write(out / SIDECAR, (json.dumps(sidecar, indent=2) + "\n").encode())
    return sidecar


def make_int8(loaded: Loaded, model: Path, golden: Path, dest: Path, spec: GoldenSpec,
              calibration: Path | None, providers: list[str] | None) -> dict[str, Any]:
    """Quantise ``model`` to ``dest`` calibrated on the golden inputs (and ``calibration``'s),
    score it on ``spec``; returns its ``variants`` entry."""
    print(f"quantizing {model.name} to int8 (static, QDQ)", file=sys.stderr, flush=True)
    if isinstance(loaded.runner, YoloV8Detector):
        inputs = detector_inputs(loaded.runner, golden, calibration)
    else:
        inputs = tensor_inputs(cast(TensorModel, loaded.runner), golden, calibration)
    count = quantize_int8(model, dest, inputs)
    print(f"calibrated on {count} inputs: {dest.name}", file=sys.stderr, flush=True)
    variant = load_model(dest, loaded.kind, providers)
    value = score(variant, spec, f"{spec.path.name} (int8)")
    return {"precision": "int8", "file": dest.name, "sha256": variant.digest,
            "size_bytes": dest.stat().st_size, "score": value, "calibration_inputs": count}


def _main(run: Any) -> int:
    try:
        result = run()
    except EdgeError as exc:
        print(f"edge-agent: {exc.message}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"edge-agent: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
