"""``python -m benchmarks gpu``: the TensorRT/CUDA path on a GPU node, in one run.

What it checks: which providers this onnxruntime build lists; which provider each requested
chain really gets (onnxruntime-gpu falls back silently); Ultralytics parity of the detections on
the GPU against the committed reference; where TensorRT engines are cached; ``session.run``
latency by batch size; and the daemon end to end on the GPU next to raw ``session.run``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.latency import DEFAULT_FRAME, ROOT, measure, report
from inference import SessionConfig, Thresholds, YoloV8Detector

sys.path.insert(0, str(ROOT / "tests"))
from support import COCO_MODEL, REFERENCE, TINY_MODEL, assert_parity, cache_dir, image_bytes

CHAINS = (("tensorrt", "cuda", "cpu"), ("cuda", "cpu"), ("cpu",))


def parity_models() -> dict[str, Path]:
    """Models whose GPU answers must match Ultralytics' CPU reference. The tiny fixture model is
    left out: its class head is scaled by 3e6 to give random weights varied scores, which also
    amplifies the GPU's different float rounding (TF32 convolutions) into different boxes."""
    models = {"yolov8n-coco-random": COCO_MODEL}
    fall = cache_dir() / "fall-best_fp16.onnx"  # the tests' cached copy, if this node has one
    if fall.is_file():
        models["fall"] = fall
    return models


async def gpu_check() -> int:
    failures = 0
    print(f"onnxruntime {ort.__version__}; available: {ort.get_available_providers()}")
    cache = Path(tempfile.mkdtemp(prefix="edge-agent-gpu-"))
    reference = json.loads(REFERENCE.read_text())
    for chain in CHAINS:
        start = time.monotonic()
        try:
            det = YoloV8Detector.load(TINY_MODEL, SessionConfig(providers=chain, cache_dir=cache))
        except Exception as exc:
            print(f"chain {chain}: load failed: {exc}")
            failures += 1
            continue
        load_s = time.monotonic() - start
        print(
            f"chain {chain}: provider in use {det.provider!r}, session providers "
            f"{det.loaded.session.get_providers()}, load {load_s:.1f}s"
        )
        bad = 0
        for key, path in parity_models().items():
            d = YoloV8Detector.load(path, SessionConfig(providers=chain, cache_dir=cache))
            for case in (c for c in reference["cases"] if c["model"] == key):
                got = d.detect(
                    image_bytes(case["image"]),
                    Thresholds(case["conf"], case["iou"], case["max_det"]),
                )
                try:
                    assert_parity(
                        case["detections"], [g.as_dict() for g in got], f"{key}/{case['image']}"
                    )
                except AssertionError as exc:
                    bad += 1
                    print(f"  parity FAILED: {str(exc)[:300]}")
        failures += bad
        print(f"  Ultralytics parity on {chain[0]}: {'ok' if not bad else f'{bad} cases differ'}")
        timing(det)
    print(f"TensorRT cache files: {cache_files(cache)[:10]}")
    for providers in (["cuda", "cpu"], ["tensorrt", "cuda", "cpu"]):
        data = DEFAULT_FRAME.read_bytes()
        threads = len(os.sched_getaffinity(0))
        result = await measure(data, COCO_MODEL, threads, 100, 10, providers)
        report(result, COCO_MODEL, DEFAULT_FRAME, len(data), threads, 100)
    return failures


def cache_files(cache: Path) -> list[str]:
    return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())


def timing(det: YoloV8Detector) -> None:
    blob = det.preprocess(image_bytes("astronaut-1080p.jpg")).blob
    for batch in (1, 4, 8):
        blobs = [blob] * batch
        for _ in range(5):
            det.infer(blobs)
        runs = []
        for _ in range(30):
            t = time.perf_counter()
            det.infer(blobs)
            runs.append(time.perf_counter() - t)
        med = float(np.median(runs)) * 1000
        print(f"  session.run batch {batch}: p50 {med:.2f} ms ({med / batch:.2f} ms/image)")
