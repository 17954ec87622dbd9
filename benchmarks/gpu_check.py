"""``python -m benchmarks gpu``: the GPU figures of a node, in one prepared run (no downloads).

1. What the node has: the onnxruntime build, its providers, the card.
2. TensorRT EP vs CUDA EP vs CPU: which provider each chain really gets (onnxruntime-gpu falls
   back silently, so it is read back from the session), and why TensorRT did not start if it
   did not; cold vs warm session creation (for TensorRT: the engine build vs the engine cache).
3. fp32 vs fp16 (the model converted to fp16 with float32 inputs and outputs, as a fleet would
   ship it), ``session.run`` latency and images/s at batch 1, 4 and 8.
4. Ultralytics parity of the detections on the GPU against the committed reference.
5. The daemon on the GPU, batching variants interleaved (``benchmarks compare``): single-stream
   latency, an offered-load sweep and 3x overload; cold start to ``/health`` 200.

Everything goes to stdout and to ``<out>/gpu.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import onnxruntime as ort

from benchmarks import compare
from benchmarks.cold_start import cold_starts
from benchmarks.common import ROOT
from inference import SessionConfig, Thresholds, YoloV8Detector
from inference.letterbox import to_input
from tests.support import COCO_MODEL, REFERENCE, assert_parity, image_bytes

FRAME = "astronaut-1080p.jpg"
CHAINS = (("tensorrt",), ("cuda",), ("cpu",))


class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def card() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"no GPU visible ({exc.__class__.__name__})"
    return out


def dynamic_batch(model: Path, into: Path) -> Path:
    """YOLOv8n-COCO with a dynamic batch axis, for batch 4 and 8. Its export hard-codes batch 1
    in the head's Reshape shapes; 0 there means "keep the input's dimension". Same weights,
    same outputs (checked on CPU: identical to the static model, image by image)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(model))
    for value in (*m.graph.input, *m.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    del m.graph.value_info[:]
    shapes = {i.name: i for i in m.graph.initializer}
    shapes |= {n.output[0]: n.attribute[0].t for n in m.graph.node if n.op_type == "Constant"}
    for node in m.graph.node:
        if node.op_type == "Reshape" and node.input[1] in shapes:
            tensor = shapes[node.input[1]]
            shape = numpy_helper.to_array(tensor).copy()
            if shape[0] == 1:
                shape[0] = 0
                tensor.CopyFrom(numpy_helper.from_array(shape, tensor.name))
    out = into / f"{model.stem}-dynbatch.onnx"
    onnx.save(m, str(out))
    return out


def to_fp16(model: Path, into: Path) -> Path | None:
    """The model in fp16 with float32 inputs and outputs (the pre/post-processing stays)."""
    import onnx  # dynamic_batch needed it already

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # a trimmed onnxruntime build
        print(f"fp16: cannot convert ({exc}): fp16 rows are skipped")
        return None
    out = into / f"{model.stem}-fp16.onnx"
    onnx.save(convert_float_to_float16(onnx.load(str(model)), keep_io_types=True), str(out))
    return out


def load(model: Path, chain: tuple[str, ...], cache: Path) -> tuple[YoloV8Detector, float, str]:
    """Load with the chain ending in CPU (as the daemon does); ORT's own complaint, if any, is
    kept: it says why a provider did not start."""
    err = io.StringIO()
    t = time.monotonic()
    with redirect_stderr(err), redirect_stdout(err):  # ORT prints its "EP Error" to stdout
        det = YoloV8Detector.load(
            model,
            SessionConfig(
                providers=(*chain, "cpu") if chain != ("cpu",) else chain, cache_dir=cache
            ),
        )
    return det, time.monotonic() - t, err.getvalue()


def timings(det: YoloV8Detector, batches: tuple[int, ...]) -> list[tuple[int, float, float]]:
    blob = to_input(det.preprocess(image_bytes(FRAME)).blob)
    out = []
    for batch in batches:
        blobs = [blob] * batch
        for _ in range(10):
            det.infer(blobs)
        runs: list[float] = []
        end = time.monotonic() + 3
        while time.monotonic() < end or len(runs) < 20:
            t = time.perf_counter()
            det.infer(blobs)
            runs.append(time.perf_counter() - t)
        p50 = statistics.median(runs) * 1000
        out.append((batch, p50, batch * len(runs) / sum(runs)))
    return out


def parity(det: YoloV8Detector, key: str) -> tuple[int, int]:
    reference = json.loads(REFERENCE.read_text())
    cases = [c for c in reference["cases"] if c["model"] == key]
    bad = 0
    for case in cases:
        got = det.detect(
            image_bytes(case["image"]), Thresholds(case["conf"], case["iou"], case["max_det"])
        )
        try:
            assert_parity(case["detections"], [g.as_dict() for g in got], case["image"])
        except AssertionError:
            bad += 1
    return len(cases) - bad, len(cases)


def providers_section(r: Report, work: Path) -> list[str]:
    """Sections 2-4; returns the providers that really ran."""
    fp32 = dynamic_batch(COCO_MODEL, work)
    fp16 = to_fp16(fp32, work)
    really: list[str] = []
    r(
        "| chain asked | provider in use | precision | session cold s | warm s | "
        "batch 1 ms | batch 4 ms | batch 8 ms | images/s at 8 | parity vs Ultralytics |"
    )
    r("|---|---|---|---|---|---|---|---|---|---|")
    for chain in CHAINS:
        for precision, model in (("fp32", fp32), ("fp16", fp16)):
            if model is None or (precision == "fp16" and chain == ("cpu",)):
                continue  # fp16 on CPU: ORT inserts casts around every op; not a CPU option
            cache = work / f"cache-{chain[0]}-{precision}"
            try:
                det, cold, why = load(model, chain, cache)
                _, warm, _ = load(model, chain, cache)
            except Exception as exc:
                r(f"| {chain[0]} | load failed: {str(exc)[:120]} | {precision} | | | | | | | |")
                continue
            if det.provider != chain[0] and precision == "fp32":
                reason = (
                    "not in this onnxruntime build"
                    if not why.strip()
                    else next(
                        (
                            ln.strip()
                            for ln in why.splitlines()
                            if "cannot open" in ln or "Failed" in ln
                        ),
                        why.strip()[:200],
                    )
                )
                r(f"| {chain[0]} | **{det.provider}** (fell back: {reason[:240]}) |" + " |" * 8)
                continue
            if det.provider != chain[0]:
                continue
            if det.provider not in really:
                really.append(det.provider)
            t = timings(det, (1, 4, 8))
            ok, n = parity(det, "yolov8n-coco-random")
            r(
                f"| {chain[0]} | {det.provider} | {precision} | {cold:.2f} | {warm:.2f} | "
                + " | ".join(f"{p50:.2f}" for _, p50, _ in t)
                + f" | {t[-1][2]:.0f} | {ok}/{n} cases |"
            )
    return really


def daemon_section(
    r: Report, work: Path, model: Path, provider: str, threads: int, quick: bool
) -> None:
    variants = [
        compare.Variant("base", {}),  # max_batch 4, padded on the GPU (pad_batches: auto)
        compare.Variant("unpadded", {"batching": {"pad_batches": "off"}}),
        compare.Variant("batch1", {"batching": {"max_batch": 1}}),
    ]
    if not quick:
        variants.append(
            compare.Variant("batch8", {"batching": {"max_batch": 8, "max_delay_ms": 2}})
        )
    args = argparse.Namespace(
        model=model,
        frame=ROOT / "tests/fixtures/images" / FRAME,
        threads=threads,
        rounds=20,
        rates=[60.0, 120.0, 240.0, 360.0],
        step_s=4.0,
        overload_s=5.0,
        workdir=work / "compare",
    )
    args.workdir.mkdir(parents=True)
    base_runtime = {"runtime": {"providers": [provider, "cpu"]}}
    for v in variants:
        v.overlay = compare.merge(base_runtime, v.overlay)
    compare.write_configs(variants, args.model, threads, args.workdir)
    asyncio.run(compare.run(variants, args.frame.read_bytes(), args))
    r(compare.render(variants, args))
    if quick:
        return
    colds = asyncio.run(cold_starts(variants[0].config, args.workdir / "base", 3))
    r(
        f"Cold start to /health 200 ({provider}, engine/state from disk): "
        + ", ".join(f"{c:.2f} s" for c in colds)
    )


def main(out: Path | None, quick: bool = False) -> int:
    r = Report()
    r(f"# GPU check, {time.strftime('%Y-%m-%d')}")
    r()
    r(
        f"Card: {card()}. onnxruntime {ort.__version__}, available providers "
        f"{ort.get_available_providers()}; {len(os.sched_getaffinity(0))} CPU cores; "
        f"Python {sys.version.split()[0]}. Model: the bundled defects YOLOv8 (dynamic batch, 640) "
        f"for timings, YOLOv8n-COCO (random weights) for parity; frame {FRAME} (1080p)."
    )
    r()
    with tempfile.TemporaryDirectory(prefix="edge-agent-gpu-") as tmp:
        work = Path(tmp)
        really = ["cuda"] if quick else providers_section(r, work)
        r()
        gpu = next((p for p in really if p != "cpu"), None)
        if gpu is None:
            r("No GPU provider ran: the daemon part is skipped.")
        else:
            model = dynamic_batch(COCO_MODEL, work)
            daemon_section(r, work, model, gpu, len(os.sched_getaffinity(0)), quick)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.md").write_text("\n".join(r.lines) + "\n")
    return 0 if really else 1
