"""Which precision of a version serves on this node: the variant gate.

A version may carry lower-precision files beside its fp32 one (``variants`` in its sidecar:
an int8 QDQ model made by ``edge-agent model pack --int8``). Each way of running a version is a
*precision path* in an explicit registry (:func:`precision_paths`): which of the version's files
it runs and the session factory that runs it. At load, for a version with a golden set, the
node measures every path it can run (a few warm runs, the median) and scores each on the golden
set; it serves the fastest whose score is within ``max_drop`` of the fp32 path's, else fp32
(:func:`choose`). A model's ``precision`` setting pins one instead: the speed comparison is
skipped, not the accuracy check (:func:`check_pinned`); with no golden set the pin is taken.

Measuring costs a few seconds, so the measurements are kept in ``<state_dir>/precision.json``
keyed by everything they depend on (the version's and its variants' digests, the golden set,
ONNX Runtime's version, the CPU's model and flags, the provider and threads): a restart reuses
them and only a change of any of these measures again.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnxruntime as ort

from agent.kinds import direct_scoring, kind_adapters
from inference.cpu import usable_cores
from inference.errors import EdgeError, ModelLoadError
from inference.files import atomic_write
from inference.golden import GoldenSpec
from inference.kinds import Servable, servable_from_session
from inference.session import (
    LoadedSession,
    SessionConfig,
    create_session,
    file_digest,
    first_provider,
    openvino_cache,
)
from inference.variants import FP32

log = logging.getLogger(__name__)

AUTO = "auto"
STORE_FILE = "precision.json"
STORE_KEEP = 64  # entries kept (versions x nodes' hardware changes): the file stays small
TIMED_RUNS = 5  # warm runs timed per path; the median is its speed

# (model file, session config, file digest) -> a session whose ``.session`` answers the subset of
# onnxruntime.InferenceSession the runners use (get_inputs/get_outputs/run/get_modelmeta).
SessionFactory = Callable[[Path, SessionConfig, str], LoadedSession]


def _always(config: SessionConfig) -> bool:
    return True


@dataclass(frozen=True)
class PrecisionPath:
    """One way to run a version: ``file`` is which of its files (``"fp32"``: its own; else a
    variant's precision, e.g. ``"int8"``), ``session`` builds the session that runs it, and
    ``available`` says whether this node can (a CPU flag, an installed runtime)."""

    file: str
    session: SessionFactory = create_session
    available: Callable[[SessionConfig], bool] = _always


def precision_paths() -> dict[str, PrecisionPath]:
    """``precision`` (as in settings, ``/v1/models`` and metrics) -> how it runs.

    "fp32" must stay: it is the reference every other path is scored against, and what serves
    when no other one qualifies. A path running the fp32 file on another runtime is one more
    entry with ``file=FP32`` and its own ``session`` and ``available``: OpenVINO at fp32 and at
    bf16, on CPU nodes that enable it (``runtime.openvino``) and have it installed."""
    return {
        FP32: PrecisionPath(FP32),  # ONNX Runtime, on the provider chain of the settings
        "int8": PrecisionPath("int8"),  # ONNX Runtime on the QDQ file (CPU: VNNI; TensorRT: int8)
        "fp32-openvino": PrecisionPath(FP32, _openvino_session("fp32"),
                                       _openvino_available("fp32")),
        "bf16": PrecisionPath(FP32, _openvino_session("bf16"), _openvino_available("bf16")),
        # An Intel integrated GPU or NPU, where OpenVINO sees one: the fp32 file at fp16.
        "fp16-igpu": PrecisionPath(FP32, _openvino_session("fp16", "GPU"),
                                   _openvino_available("fp16", "GPU")),
        "fp16-npu": PrecisionPath(FP32, _openvino_session("fp16", "NPU"),
                                  _openvino_available("fp16", "NPU")),
    }


def _openvino_session(precision: str, device: str = "CPU") -> SessionFactory:
    def session(path: Path, config: SessionConfig, digest: str) -> LoadedSession:
        from inference.openvino_engine import create_openvino_session

        # As many streams as runs the thread layout makes at once: one run on every core
        # ("wide"), or one single-threaded run per core ("narrow"); a stream runs one at a time.
        threads = config.threads()
        return create_openvino_session(path, precision, threads, digest,
                                       streams=max(1, usable_cores() // threads),
                                       cache_dir=openvino_cache(config), device=device)

    return session


def _openvino_available(precision: str, device: str = "CPU") -> Callable[[SessionConfig], bool]:
    def available(config: SessionConfig) -> bool:
        if not config.openvino or first_provider(config) != "cpu":
            return False
        from inference.openvino_engine import available_precisions, has_device

        if device != "CPU":  # an Intel GPU or NPU this node has
            return has_device(device)
        return precision in available_precisions()  # bf16 only on a CPU that computes it

    return available


def precision_choices() -> list[str]:
    """What a model's ``precision`` setting accepts."""
    return [AUTO, *precision_paths()]


@dataclass(frozen=True)
class Measured:
    """One path measured on this node: median ms of a warm batch-1 run and golden-set score
    (None: not scored); ``error``: it failed to load or run, so it is not a candidate."""

    precision: str
    median_ms: float | None = None
    score: float | None = None
    packed_score: float | None = None  # what the pipeline that packed it measured
    error: str = ""

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.median_ms is not None:
            out["median_ms"] = round(self.median_ms, 3)
        if self.score is not None:
            out["score"] = round(self.score, 6)
        if self.packed_score is not None:
            out["packed_score"] = self.packed_score
        if self.error:
            out["error"] = self.error
        return out


def choose(measured: Mapping[str, Measured], max_drop: float) -> tuple[str, str]:
    """The precision to serve and why: the fastest path whose golden-set score is at most
    ``max_drop`` under the fp32 path's; fp32 when it is the fastest, when no other qualifies,
    or when fp32 itself has no score to compare with."""
    fp32 = measured.get(FP32)
    if fp32 is None or fp32.error or fp32.score is None or fp32.median_ms is None:
        return FP32, "fp32: no fp32 score to check a lower precision against"
    qualified = []
    refused = []
    for m in measured.values():
        if m.error or m.score is None or m.median_ms is None:
            if m.precision != FP32:
                refused.append(f"{m.precision} {m.error or 'not measured'}")
            continue
        drop = fp32.score - m.score
        # A rounding hair over the limit is not a drop over it.
        if drop <= max_drop + 1e-9:
            qualified.append(m)
        else:
            refused.append(f"{m.precision} scored {m.score:.4f}, {drop:.4f} under fp32 "
                           f"(max_drop {max_drop})")
    # Ties go to fp32 (exact Ultralytics parity), then to the name, so the choice is stable.
    best = min(qualified, key=lambda m: (m.median_ms, m.precision != FP32, m.precision))
    if best.precision == FP32:
        why = "fp32: no lower precision is faster within max_drop"
    else:
        why = (f"{best.precision}: {best.median_ms:.2f} ms vs fp32 {fp32.median_ms:.2f} ms, "
               f"score {best.score:.4f} vs {fp32.score:.4f} (max_drop {max_drop})")
    return best.precision, why + ("; refused: " + "; ".join(refused) if refused else "")


def check_pinned(measured: Mapping[str, Measured], pinned: str,
                 max_drop: float) -> tuple[str, str]:
    """A pin skips the speed comparison, not the accuracy check: the pinned precision serves
    when its golden-set score is at most ``max_drop`` under fp32's, else fp32."""
    fp32, mine = measured.get(FP32), measured.get(pinned)
    if fp32 is None or fp32.error or fp32.score is None:
        return FP32, f"pinned {pinned}, but fp32 has no score to check it against: fp32 serves"
    if mine is None or mine.error or mine.score is None:
        what = mine.error if mine is not None and mine.error else "not measured"
        return FP32, f"pinned {pinned}, but it failed: {what}: fp32 serves"
    drop = fp32.score - mine.score
    if drop > max_drop + 1e-9:
        return FP32, (f"pinned {pinned}, but it scored {mine.score:.4f}, {drop:.4f} under fp32 "
                      f"(max_drop {max_drop}): fp32 serves")
    return pinned, (f"{pinned}: pinned by the model's precision setting, score {mine.score:.4f} "
                    f"vs fp32 {fp32.score:.4f} (max_drop {max_drop})")


@dataclass(frozen=True)
class PrecisionChoice:
    """What serves and why, as ``/v1/models`` shows it."""

    precision: str
    reason: str
    pinned: str = ""  # the setting's pin; empty: auto
    max_drop: float | None = None
    measured: tuple[Measured, ...] = ()
    reused: bool = False  # measurements read from the state dir, not made now

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"serving": self.precision, "reason": self.reason,
                               "setting": self.pinned or AUTO}
        if self.max_drop is not None:
            out["max_drop"] = self.max_drop
        if self.measured:
            out["variants"] = {m.precision: m.describe() for m in self.measured}
            out["measured"] = "cached" if self.reused else "now"
        return out


@dataclass(frozen=True)
class VariantFile:
    """A file of the version at one precision, on this node."""

    precision: str
    path: Path
    sha256: str  # expected digest (hex); empty: not checked
    packed_score: float | None = None


@dataclass(frozen=True)
class Selected:
    """The outcome of the gate: the file and path that serve, and the record of the choice."""

    file: VariantFile
    path: PrecisionPath
    choice: PrecisionChoice


def cpu_identity() -> dict[str, str]:
    """The CPU's model name and a digest of its flags (what an int8 or bf16 kernel depends
    on); empty fields where /proc/cpuinfo cannot be read."""
    model = flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = " ".join(sorted(value.split()))
            if model and flags:
                break
    except OSError:
        pass
    return {"cpu": model, "flags": hashlib.sha256(flags.encode()).hexdigest()[:16]}


class ChoiceStore:
    """``<state_dir>/precision.json``: measurements by key, written atomically. A store that
    cannot be read or written costs a measurement, never a failed load."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STORE_FILE

    def _read(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("precision store unreadable: measuring again",
                        extra={"path": str(self.path), "error": str(exc)})
            return {}
        entries = doc.get("entries") if isinstance(doc, dict) else None
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> tuple[list[Measured], float | None] | None:
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        try:
            measured = [Measured(**m) for m in entry["measured"]]
            max_drop = entry.get("max_drop")
            return measured, None if max_drop is None else float(max_drop)
        except (KeyError, TypeError, ValueError):
            return None

    def put(self, key: str, model: str, measured: list[Measured], max_drop: float) -> None:
        entries = self._read()
        entries[key] = {"model": model, "saved_at": time.time(), "max_drop": max_drop,
                        "measured": [asdict(m) for m in measured]}
        newest = sorted(entries.items(), key=lambda kv: -float(kv[1].get("saved_at", 0))
                        if isinstance(kv[1], dict) else 0.0)[:STORE_KEEP]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, (json.dumps({"entries": dict(newest)}, indent=1)
                                     + "\n").encode())
        except OSError as exc:
            log.warning("precision store not written: the next start measures again",
                        extra={"path": str(self.path), "error": exc.strerror})


def store_key(files: list[VariantFile], golden: GoldenSpec, config: SessionConfig,
              provider: str, paths: list[str]) -> str:
    """Everything a measurement depends on, hashed."""
    ident = {
        "files": sorted((f.precision, f.sha256) for f in files),
        "golden": golden.sha256 or str(golden.path),
        "scoring": dict(golden.scoring or {}),
        "onnxruntime": ort.__version__,
        "openvino": _installed_version("openvino") if config.openvino else "",
        **cpu_identity(),
        "provider": provider,
        "threads": config.threads(),
        "paths": sorted(paths),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()


def _installed_version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return ""


def build_runner(kind: str, path: PrecisionPath, file: VariantFile, config: SessionConfig,
                 names: dict[int, str] | None, check: bool = True) -> Servable:
    """A runner of ``kind`` on ``file`` through ``path``'s session (``check``: the file's
    sha256 is verified first)."""
    digest = file.sha256
    if check or not digest:
        try:
            digest = file_digest(file.path)
        except OSError as exc:
            raise ModelLoadError(f"cannot read the {file.precision} file {file.path}: "
                                 f"{exc.strerror}") from exc
    if file.sha256 and digest != file.sha256:
        raise ModelLoadError(f"{file.path} has sha256 {digest}, expected {file.sha256}: "
                             f"the {file.precision} file is corrupt")
    loaded = path.session(file.path, config, digest)
    # The thread layout rebuilds sessions with other threads: through this path's factory.
    loaded.factory = None if path.session is create_session else path.session
    loaded.path = loaded.path or file.path
    return servable_from_session(kind, loaded, names)


def _error(exc: Exception) -> str:
    return exc.message if isinstance(exc, EdgeError) else f"{type(exc).__name__}: {exc}"


def _timed_run(runner: Servable) -> float:
    """One warm batch-1 run, in ms (timed in the thread that runs it)."""
    t0 = time.monotonic()
    runner.warmup(1)
    return (time.monotonic() - t0) * 1000


async def measure(kind: str, candidates: dict[str, tuple[PrecisionPath, VariantFile]],
                  config: SessionConfig, names: dict[int, str] | None,
                  golden: GoldenSpec) -> list[Measured]:
    """Each candidate's speed (median of warm batch-1 runs) and golden-set score on this node.

    The timed runs are interleaved (one of each path, then again), so a burst of other work on
    the node slows every path alike instead of whichever was being timed then."""
    runners: dict[str, Servable] = {}
    errors: dict[str, str] = {}
    for name, (path, file) in candidates.items():
        try:
            # (the fp32 file's digest was checked by the load that asks)
            runner = await asyncio.to_thread(build_runner, kind, path, file, config, names,
                                             file.precision != FP32)
            await asyncio.to_thread(runner.warmup, 1)
            runners[name] = runner
        except Exception as exc:  # an ORT kernel that fails on this CPU: not a candidate
            errors[name] = _error(exc)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(TIMED_RUNS):
        for name in list(runners):
            try:
                times[name].append(await asyncio.to_thread(_timed_run, runners[name]))
            except Exception as exc:
                errors[name] = _error(exc)
                del runners[name]
    scores: dict[str, float] = {}
    for name, runner in list(runners.items()):
        detect, infer = direct_scoring(runner)
        try:
            scores[name] = await kind_adapters()[kind].score(runner, golden, detect, infer)
        except Exception as exc:
            errors[name] = _error(exc)
    runners.clear()  # the sessions go now, before the chosen one is built
    out = []
    for name, (_, file) in candidates.items():
        if name in errors:
            out.append(Measured(name, packed_score=file.packed_score, error=errors[name]))
        else:
            out.append(Measured(name, statistics.median(times[name]), scores[name],
                                file.packed_score))
    return out


async def select(
    *,
    model: str,
    kind: str,
    files: list[VariantFile],  # the fp32 file first
    golden: GoldenSpec | None,
    pinned: str,
    max_drop: float | None,
    default_max_drop: float,
    config: SessionConfig,
    provider: str,
    names: dict[int, str] | None,
    store: ChoiceStore,
) -> Selected:
    """The gate (see the module docstring)."""
    paths = precision_paths()
    by_precision = {f.precision: f for f in files}
    fp32 = Selected(by_precision[FP32], paths[FP32], PrecisionChoice(FP32, "", pinned))

    def fallback(reason: str, **extra: Any) -> Selected:
        return Selected(fp32.file, fp32.path, PrecisionChoice(FP32, reason, pinned, **extra))

    pin = pinned if pinned and pinned != AUTO else ""
    if pin:
        path = paths.get(pin)
        why = ""
        if path is None or path.file not in by_precision:
            why = f"pinned {pin}, but this version has no {pin} variant: fp32 serves"
        elif not await asyncio.to_thread(path.available, config):
            why = f"pinned {pin}, but this node cannot run it: fp32 serves"
        if why:
            log.warning("pinned precision unavailable", extra={"model": model, "reason": why})
            return fallback(why)
        if pin == FP32 or golden is None:  # nothing to verify, or nothing to verify it with
            return Selected(by_precision[paths[pin].file], paths[pin], PrecisionChoice(
                pin, f"{pin}: pinned by the model's precision setting"
                + ("" if pin == FP32 else "; no golden set to verify it against"), pinned))
    # (in a thread: asking whether OpenVINO runs here imports it, a second and more)
    runnable = await asyncio.to_thread(
        lambda: {n: p for n, p in paths.items()
                 if p.file in by_precision and p.available(config)})
    if set(runnable) == {FP32}:
        return fallback("fp32: the version has no other precision this node can run")
    if golden is None:
        return fallback("fp32: no golden set to verify a lower precision against")
    key = store_key(files, golden, config, provider, list(runnable))
    cached = await asyncio.to_thread(store.get, key)
    reused = cached is not None
    if cached is not None:
        measured, stored_drop = cached
        # A version restarted from the cache has no manifest at hand: the limit it was chosen
        # under last time holds.
        limit = max_drop if max_drop is not None else (
            stored_drop if stored_drop is not None else default_max_drop)
    else:
        limit = max_drop if max_drop is not None else default_max_drop
        log.info("measuring precisions", extra={"model": model, "precisions": list(runnable)})
        measured = await measure(kind, {n: (p, by_precision[p.file]) for n, p in runnable.items()},
                                 config, names, golden)
        await asyncio.to_thread(store.put, key, model, measured, limit)
    by_name = {m.precision: m for m in measured}
    precision, why = check_pinned(by_name, pin, limit) if pin else choose(by_name, limit)
    if pin and precision != pin:
        log.warning("pinned precision refused", extra={"model": model, "reason": why})
    choice = PrecisionChoice(precision, why, pinned, limit, tuple(measured), reused)
    log.info("precision chosen", extra={"model": model, "precision": precision, "reason": why,
                                        "measured": "cached" if reused else "now"})
    path = paths[precision]
    return Selected(by_precision[path.file], path, choice)
