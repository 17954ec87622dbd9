"""Train the bundled ``fusion`` model (motor state from a sensor window) and export it to ONNX.

    python -m training.fusion --out inference/bundled/fusion

The graph takes raw inputs, ``sensors`` float32 [batch, 256, 6] (``sensors.CHANNELS`` at
1024 Hz) and ``defect_rate`` float32 [batch, 1], and computes its features itself, so callers
never re-implement them: per vibration axis log RMS, crest factor, log kurtosis and the log mean
DFT magnitude (Hann window, fixed cos/sin bases) in four bands (``BANDS_HZ``), then the mean
temperature, current and sound level, and the defect rate. ``features`` (numpy, for training)
and ``_feature_nodes`` (ONNX ops) are the same computation written twice; a unit test holds
them together.

Features are standardised with the training set's mean and std (constants in the graph), then
a small MLP trained here with plain numpy gives ``state_probs`` float32 [batch, 5] (softmax over
``sensors.STATES``). ``anomaly_score`` float32 [batch, 1] is the Mahalanobis distance (RMS over
features, shrunk covariance) of the standardised features from the normal class, divided by its
99th percentile on the normal training samples: about 1 % of normal windows score above 1,
and a score above 1 means "unlike a healthy motor" whatever the classifier says.

Everything is seeded: on one machine, two runs with the same arguments write the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference.files import atomic_write
from training import sensors

VERSION = "1.0.0"
OPSET = 17
IR_VERSION = 8  # onnxruntime builds that predate IR 12 still load it
BANDS_HZ: tuple[tuple[float, float], ...] = ((15, 35), (35, 60), (60, 120), (200, 450))
AXES = ("x", "y", "z")
FEATURES: tuple[str, ...] = (
    *(f"log_rms_{a}" for a in AXES),
    *(f"crest_{a}" for a in AXES),
    *(f"log_kurtosis_{a}" for a in AXES),
    *(f"log_band_{a}_{lo}_{hi}hz" for a in AXES for lo, hi in BANDS_HZ),
    *sensors.CHANNELS[3:],  # window means of the slow channels
    "defect_rate",
)
_EPS = 1e-6  # keeps log() and divisions finite on a flat (dead sensor) window
_EPS_VAR2 = 1e-12
_SHRINK = 0.05  # covariance shrinkage: some features are nearly collinear (x and y axes)


def _spectral_constants() -> tuple[np.ndarray, np.ndarray]:
    """The Hann-windowed DFT basis [WINDOW, 2K] (cos | sin) and the band pooling [K, bands]."""
    n = sensors.WINDOW
    freqs = np.arange(n // 2 + 1) * sensors.SAMPLE_RATE_HZ / n
    in_band = [(freqs >= lo) & (freqs < hi) for lo, hi in BANDS_HZ]
    bins = np.flatnonzero(np.any(in_band, axis=0))
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)
    # Scaled so that a sine of amplitude A (g) on a bin centre reads A.
    angle = 2 * np.pi * np.outer(np.arange(n), bins) / n
    scale = (2.0 / hann.sum()) * hann[:, None]
    basis = np.concatenate([scale * np.cos(angle), scale * np.sin(angle)], axis=1)
    pool = np.stack([band[bins] / band[bins].sum() for band in in_band], axis=1)
    return basis.astype(np.float32), pool.astype(np.float32)


def features(window: np.ndarray, defect_rate: np.ndarray) -> np.ndarray:
    """float32 [n, len(FEATURES)] from raw windows [n, 256, 6] and defect rates [n, 1]."""
    x = np.asarray(window, dtype=np.float32)
    vib = x[:, :, :3]
    xc = vib - vib.mean(axis=1, keepdims=True)
    sq = xc * xc
    var = sq.mean(axis=1)
    rms = np.sqrt(var)
    crest = np.abs(xc).max(axis=1) / (rms + _EPS)
    kurtosis = np.log((sq * sq).mean(axis=1) / (var * var + _EPS_VAR2) + _EPS)
    basis, pool = _spectral_constants()
    k = pool.shape[0]
    spec = np.matmul(xc.transpose(0, 2, 1), basis)
    re, im = spec[:, :, :k], spec[:, :, k:]
    bands = np.log(np.matmul(np.sqrt(re * re + im * im), pool) + _EPS).reshape(len(x), -1)
    slow = x[:, :, 3:].mean(axis=1)
    rate = np.asarray(defect_rate, dtype=np.float32).reshape(len(x), 1)
    parts = [np.log(rms + _EPS), crest, kurtosis, bands, slow, rate]
    return np.concatenate(parts, axis=1).astype(np.float32)


class _Builder:
    """Collects nodes and constants; each op gets a fresh output name unless one is given."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, *inputs: str, output: str | None = None, **attrs: Any) -> str:
        out = output or f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], **attrs))
        return out

    def slice(self, x: str, start: int, end: int, axis: int) -> str:
        tag = f"{start}_{end}_{axis}"
        ints = {n: np.array([v], np.int64) for n, v in (("s", start), ("e", end), ("a", axis))}
        return self.op("Slice", x, *(self.const(f"slice_{n}_{tag}", v) for n, v in ints.items()))


def _feature_nodes(g: _Builder, sensors_in: str, rate_in: str) -> str:
    """The ONNX twin of ``features``; returns the name of the [batch, F] feature tensor."""
    eps = g.const("eps", np.array(_EPS, np.float32))
    eps_var2 = g.const("eps_var2", np.array(_EPS_VAR2, np.float32))
    basis, pool = _spectral_constants()
    k = pool.shape[0]
    vib = g.slice(sensors_in, 0, 3, 2)
    xc = g.op("Sub", vib, g.op("ReduceMean", vib, axes=[1], keepdims=1))
    sq = g.op("Mul", xc, xc)
    var = g.op("ReduceMean", sq, axes=[1], keepdims=0)
    rms = g.op("Sqrt", var)
    rms_eps = g.op("Add", rms, eps)
    peak = g.op("ReduceMax", g.op("Abs", xc), axes=[1], keepdims=0)
    crest = g.op("Div", peak, rms_eps)
    m4 = g.op("ReduceMean", g.op("Mul", sq, sq), axes=[1], keepdims=0)
    ratio = g.op("Div", m4, g.op("Add", g.op("Mul", var, var), eps_var2))
    kurtosis = g.op("Log", g.op("Add", ratio, eps))
    spec = g.op("MatMul", g.op("Transpose", xc, perm=[0, 2, 1]), g.const("dft_basis", basis))
    re, im = g.slice(spec, 0, k, 2), g.slice(spec, k, 2 * k, 2)
    mag = g.op("Sqrt", g.op("Add", g.op("Mul", re, re), g.op("Mul", im, im)))
    pooled = g.op("MatMul", mag, g.const("band_pool", pool))
    bands = g.op("Flatten", g.op("Log", g.op("Add", pooled, eps)), axis=1)
    slow = g.op("ReduceMean", g.slice(sensors_in, 3, 6, 2), axes=[1], keepdims=0)
    parts = [g.op("Log", rms_eps), crest, kurtosis, bands, slow, rate_in]
    return g.op("Concat", *parts, axis=1, output="features")


@dataclass(frozen=True)
class Params:
    """Everything the exported graph needs beyond the feature computation."""

    mean: np.ndarray  # [F] training feature mean
    std: np.ndarray  # [F]
    layers: list[tuple[np.ndarray, np.ndarray]]  # (W [in, out], b [out]) per layer
    normal_center: np.ndarray  # [F] standardised mean of the normal class
    whiten: np.ndarray  # [F, F]: (z - center) @ whiten is about white on normal data
    anomaly_scale: float  # p99 of the normal training samples' raw distance


def _batched(name: str, *dims: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])


def _model(g: _Builder, outputs: list[onnx.ValueInfoProto], description: str) -> onnx.ModelProto:
    batch_in = [
        _batched("sensors", sensors.WINDOW, len(sensors.CHANNELS)),
        _batched("defect_rate", 1),
    ]
    graph = helper.make_graph(g.nodes, "fusion", batch_in, outputs, g.initializers)
    model = helper.make_model(
        graph, producer_name="edge-agent", opset_imports=[helper.make_opsetid("", OPSET)]
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "labels": json.dumps(list(sensors.STATES)),
            "channels": json.dumps(list(sensors.CHANNELS)),
            "sample_rate_hz": str(sensors.SAMPLE_RATE_HZ),
            "features": json.dumps(list(FEATURES)),
            "description": description,
            "version": VERSION,
        },
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def features_model() -> onnx.ModelProto:
    """A model whose only output is the ``features`` tensor: how tests check the twin."""
    g = _Builder()
    _feature_nodes(g, "sensors", "defect_rate")
    return _model(g, [_batched("features", len(FEATURES))], "fusion features only")


def build_model(params: Params) -> onnx.ModelProto:
    g = _Builder()
    feats = _feature_nodes(g, "sensors", "defect_rate")
    f32 = np.float32
    z = g.op(
        "Div",
        g.op("Sub", feats, g.const("feature_mean", params.mean.astype(f32))),
        g.const("feature_std", params.std.astype(f32)),
    )
    h = z
    for i, (w, b) in enumerate(params.layers):
        h = g.op("Gemm", h, g.const(f"w{i}", w.astype(f32)), g.const(f"b{i}", b.astype(f32)))
        if i < len(params.layers) - 1:
            h = g.op("Relu", h)
    g.op("Softmax", h, axis=1, output="state_probs")
    d = g.op("Sub", z, g.const("normal_center", params.normal_center.astype(f32)))
    white = g.op("MatMul", d, g.const("whiten", params.whiten.astype(f32)))
    dist = g.op("Sqrt", g.op("ReduceMean", g.op("Mul", white, white), axes=[1], keepdims=1))
    scale = g.const("anomaly_scale", np.array(params.anomaly_scale, f32))
    g.op("Div", dist, scale, output="anomaly_score")
    outputs = [_batched("state_probs", len(sensors.STATES)), _batched("anomaly_score", 1)]
    description = (
        "Motor/conveyor state from a 0.25 s sensor window: state_probs is a softmax over labels; "
        "anomaly_score is the distance from healthy operation, above 1 for about 1% of "
        "healthy windows and for most faults."
    )
    return _model(g, outputs, description)


def train_mlp(
    x: np.ndarray, y: np.ndarray, hidden: Sequence[int], epochs: int, lr: float, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Softmax regression through ReLU layers, mini-batch Adam, cosine-decayed learning rate."""
    rng = np.random.default_rng(seed)
    sizes = [x.shape[1], *hidden, len(sensors.STATES)]
    params = [
        (rng.normal(0.0, np.sqrt(2.0 / m), (m, n)), np.zeros(n))
        for m, n in itertools.pairwise(sizes)
    ]
    flat = [p for layer in params for p in layer]
    m1 = [np.zeros_like(p) for p in flat]
    m2 = [np.zeros_like(p) for p in flat]
    onehot = np.eye(sizes[-1])[y]
    beta1, beta2, decay, batch, step = 0.9, 0.999, 1e-4, 64, 0
    for epoch in range(epochs):
        rate = lr * 0.5 * (1.0 + np.cos(np.pi * epoch / epochs))
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            acts = [x[idx]]
            for i, (w, b) in enumerate(params):
                a = acts[-1] @ w + b
                acts.append(np.maximum(a, 0.0) if i < len(params) - 1 else a)
            logits = acts[-1] - acts[-1].max(axis=1, keepdims=True)
            probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
            delta = (probs - onehot[idx]) / len(idx)
            grads: list[np.ndarray] = []
            for i in range(len(params) - 1, -1, -1):
                w = params[i][0]
                grads[:0] = [acts[i].T @ delta + decay * w, delta.sum(axis=0)]
                delta = (delta @ w.T) * (acts[i] > 0)
            step += 1
            for j, (p, gr) in enumerate(zip(flat, grads, strict=True)):
                m1[j] = beta1 * m1[j] + (1 - beta1) * gr
                m2[j] = beta2 * m2[j] + (1 - beta2) * gr * gr
                mhat = m1[j] / (1 - beta1**step)
                vhat = m2[j] / (1 - beta2**step)
                p -= rate * mhat / (np.sqrt(vhat) + 1e-8)  # in place: flat aliases params
    return params


def fit(
    batch: sensors.SensorBatch, hidden: Sequence[int], epochs: int, lr: float, seed: int
) -> Params:
    feats = features(batch.window, batch.defect_rate).astype(np.float64)
    mean, std = feats.mean(axis=0), feats.std(axis=0) + 1e-6
    z = (feats - mean) / std
    layers = train_mlp(z, batch.label, hidden, epochs, lr, seed)
    normal = z[batch.label == sensors.NORMAL]
    center = normal.mean(axis=0)
    cov = np.cov(normal, rowvar=False) + _SHRINK * np.eye(z.shape[1])
    whiten = np.linalg.inv(np.linalg.cholesky(cov)).T
    dist = np.sqrt((((normal - center) @ whiten) ** 2).mean(axis=1))
    return Params(mean, std, layers, center, whiten, float(np.percentile(dist, 99)))


def run_onnx(model: bytes, window: np.ndarray, rate: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort  # training-time only

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # training shares the CPU with other jobs
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    feed = {"sensors": window.astype(np.float32), "defect_rate": rate.astype(np.float32)}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def _auc(negative: np.ndarray, positive: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counting half."""
    diff = positive[:, None] - negative[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def evaluate(model: bytes, window: np.ndarray, rate: np.ndarray, label: np.ndarray) -> dict:
    out = run_onnx(model, window, rate)
    accuracy = float((out["state_probs"].argmax(axis=1) == label).mean())
    score = out["anomaly_score"][:, 0].astype(np.float64)
    normal = label == sensors.NORMAL
    return {
        "accuracy": accuracy,
        "normal_below_threshold": float((score[normal] < 1.0).mean()),
        "faulty_above_threshold": float((score[~normal] > 1.0).mean()),
        "normal_auc": _auc(score[normal], score[~normal]),
        "per_state_above_threshold": {
            s: float((score[label == i] > 1.0).mean()) for i, s in enumerate(sensors.STATES)
        },
    }


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez_compressed`` with fixed zip timestamps, so reruns write the same bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("inference/bundled/fusion"))
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--train-size", type=int, default=6000)
    parser.add_argument("--golden-size", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    args = parser.parse_args(argv)
    if args.train_size < 20 * len(sensors.STATES) or args.golden_size < len(sensors.STATES):
        parser.error("--train-size must be >= 100 and --golden-size >= 5")

    started = time.monotonic()
    golden_seed = args.seed + 1  # a different stream: the golden set is never trained on
    train = sensors.generate(args.train_size, args.seed)
    params = fit(train, args.hidden, args.epochs, args.lr, args.seed)
    model = build_model(params).SerializeToString()
    golden = sensors.generate(args.golden_size, golden_seed)
    # Stored as float16 to halve the file; readers cast back to float32, as evaluated here.
    golden_sensors = golden.window.astype(np.float16)
    result = evaluate(model, golden_sensors.astype(np.float32), golden.defect_rate, golden.label)

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write(args.out / "model.onnx", model)
    arrays = {"sensors": golden_sensors, "defect_rate": golden.defect_rate, "label": golden.label}
    atomic_write(args.out / "golden.npz", _npz(arrays))
    sidecar = {
        "name": "fusion",
        "version": VERSION,
        "kind": "tensor",
        "file": "model.onnx",
        "sha256": hashlib.sha256(model).hexdigest(),
        "size_bytes": len(model),
        "labels": list(sensors.STATES),
        "inputs": {
            "sensors": {
                "channels": list(sensors.CHANNELS),
                "sample_rate_hz": sensors.SAMPLE_RATE_HZ,
            },
            "defect_rate": {},
        },
        "outputs": {"state_probs": {"labels": list(sensors.STATES)}, "anomaly_score": {}},
        "golden": {
            "file": "golden.npz",
            "samples": args.golden_size,
            "seed": golden_seed,
            "sensors_dtype": "float16",
            "metric": "accuracy",
            "score": result["accuracy"],
        },
        "training": {
            "seed": args.seed,
            "train_size": args.train_size,
            "hidden": list(args.hidden),
            "epochs": args.epochs,
            "lr": args.lr,
            "generator": "training.sensors",
            "features": list(FEATURES),
        },
        "anomaly": {
            "threshold": 1.0,
            "reference": "p99 of the normal training samples' distance",
            **{k: v for k, v in result.items() if k != "accuracy"},
        },
    }
    text = json.dumps(sidecar, indent=2) + "\n"
    atomic_write(args.out / "model.json", text.encode())
    seconds = time.monotonic() - started
    print(f"accuracy {result['accuracy']:.4f}, {len(model)} bytes, {seconds:.1f} s -> {args.out}")
    return sidecar


if __name__ == "__main__":
    main()
