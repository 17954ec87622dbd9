"""The two Prometheus texts: the compact ``/metrics/summary`` and the full ``/metrics``.

Both are rendered by prometheus_client from metric families built at scrape time from the
recorder and the models' state; nothing is registered globally.

The summary is bounded by construction, whatever the traffic: per model at most
:data:`SERIES_PER_MODEL` series (status codes folded into :data:`SUMMARY_CODES`, refusals
reduced to :data:`SUMMARY_REASONS`), node-wide at most six (readiness, control plane, last sync,
and the accelerators folded into one ``device="all"`` reading); label values of bounded length
(model names validated to ``agent.settings.MAX_MODEL_NAME`` characters, versions cut to
:data:`MAX_VERSION_LABEL`, digests to 12 hex digits, providers from a fixed set) and numbers cut
to five significant digits where they are measurements. ``benchmarks/summary_size.py`` renders
the worst case. What the summary leaves out (exact codes and reasons, each device, throughput,
temperature) is in ``/metrics``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from agent.metrics.accelerators import Reading
from agent.metrics.recorder import STAGES, Recorder
from agent.metrics.window import SlidingQuantiles

QUANTILES = (0.5, 0.95, 0.99)
# The summary's refusal reason: the one the fleet alerts on (the node's own queue is full); the
# others are in /metrics, and counted by class in the summary's code="4xx"|"5xx".
SUMMARY_REASONS = ("queue_full",)
SUMMARY_CODES = ("2xx", "4xx", "5xx")
MAX_VERSION_LABEL = 16  # a longer version (a sidecar's, any length): prefix + "~" + hash
DIGEST_LABEL_HEX = 12
# latency (3 quantiles, count, sum), queue depth and its max, codes, reasons, info, score,
# canary, shadow agreement
SERIES_PER_MODEL = 5 + 2 + len(SUMMARY_CODES) + len(SUMMARY_REASONS) + 4


@dataclass(frozen=True)
class ShadowSnapshot:
    """The second version loaded beside the active one (a bake), and how far it agrees."""

    version: str
    agreement: float | None  # over the last samples (agent.shadow.WINDOW); None: none yet
    samples: int  # since it became the shadow


@dataclass(frozen=True)
class ModelSnapshot:
    """What the exposition needs to know of a served model (its active version)."""

    name: str
    version: str
    digest: str
    provider: str
    queue_depth: int
    validation_score: float | None
    rollout: str = ""  # "stable" | "canary" once a fleet manifest assigned the node
    # The active version's queue, since it was loaded: batches that raised (then re-run one
    # input at a time), requests whose deadline passed before they ran, overloads entered,
    # thread-layout switches.
    failed_batches: int = 0
    expired: int = 0
    overload_episodes: int = 0
    relayouts: int = 0
    shadow: ShadowSnapshot | None = None
    rollbacks: int = 0  # since start
    precision: str = ""  # the precision that serves ("fp32", "int8", ...)


@dataclass(frozen=True)
class Snapshot:
    ready: bool
    models: list[ModelSnapshot]
    accelerators: list[Reading]
    # Model sync (only with a fleet manifest): connected (None: not tried yet), last success.
    control_plane: tuple[bool | None, float | None] | None = None


class _Families:
    """Adapts a list of families to what ``generate_latest`` reads."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def version_label(version: str) -> str:
    """``version`` as a label value of at most :data:`MAX_VERSION_LABEL` characters: a long one
    keeps its start and a hash of the whole, so two long versions stay apart."""
    if len(version) <= MAX_VERSION_LABEL:
        return version
    digest = hashlib.sha256(version.encode()).hexdigest()[:8]
    return f"{version[:MAX_VERSION_LABEL - 9]}~{digest}"


def digest_label(digest: str) -> str:
    """``sha256:<64 hex>`` -> ``sha256:<12 hex>`` (a version without a name is called by
    those 12 too): 48 bits tell a fleet's versions apart, 52 bytes fewer per model. The whole
    digest is in ``/v1/models``."""
    algorithm, _, hexdigest = digest.partition(":")
    if not hexdigest:
        return digest[:DIGEST_LABEL_HEX]
    return f"{algorithm}:{hexdigest[:DIGEST_LABEL_HEX]}"


def code_class(code: str) -> str:
    """``"503"`` -> ``"5xx"``: one of :data:`SUMMARY_CODES` whatever the code (the API answers
    no 1xx or 3xx; anything not a number counts as a server error)."""
    number = int(code) if code.isdigit() else 500
    return "2xx" if number < 400 else "4xx" if number < 500 else "5xx"


def _short(value: float) -> float:
    """Five significant digits: far inside the sketch's 1 % and a third of the bytes."""
    return float(f"{value:.5g}")


def _summary(
    name: str, doc: str, series: Iterable[tuple[dict[str, str], SlidingQuantiles]]
) -> Metric:
    family = Metric(name, doc, "summary")
    for labels, window in series:
        summary = window.summary(QUANTILES)
        for q, value in summary.quantiles.items():
            family.add_sample(name, {**labels, "quantile": str(q)}, _short(value))
        family.add_sample(name + "_count", labels, summary.count)
        family.add_sample(name + "_sum", labels, _short(summary.sum))
    return family


def _folded(counts: Counter[str], fold: Callable[[str], str]) -> list[tuple[str, int]]:
    out: Counter[str] = Counter()
    for key, n in counts.items():
        out[fold(key)] += n
    return sorted(out.items())


def summary_families(recorder: Recorder, snap: Snapshot, exact: bool = False) -> list[Metric]:
    """The summary's families (bounded: see the module's docstring). ``exact``: what
    ``/metrics`` carries instead: every status code, refusal reason and device, throughput
    and temperature."""
    window = f"over {recorder.window_s:g} s"
    stats = [(m, recorder.models[m.name]) for m in snap.models if m.name in recorder.models]
    latency = _summary(
        "edge_inference_latency_seconds",
        f"Latency {window}.",
        (({"model": m.name}, s.latency) for m, s in stats),
    )
    # HELP texts are short: every byte of them is paid by every node at every scrape.
    depth = GaugeMetricFamily("edge_queue_depth", "Queued.", labels=["model"])
    depth_max = GaugeMetricFamily(
        "edge_queue_depth_max", f"Max queued {window}.", labels=["model"]
    )
    rate = GaugeMetricFamily(
        "edge_throughput_per_second", f"Answers/s {window}.", labels=["model"]
    )
    codes = CounterMetricFamily(
        "edge_requests", "Requests by status" + ("." if exact else " class."),
        labels=["model", "code"],
    )
    rejected = CounterMetricFamily(
        "edge_requests_rejected", "Refusals.", labels=["model", "reason"]
    )
    info = GaugeMetricFamily(
        "edge_model_info", "Served.",
        labels=["model", "version", "digest", "provider", "precision"],
    )
    score = GaugeMetricFamily(
        "edge_model_validation_score", "Golden score.", labels=["model", "version"]
    )
    canary = GaugeMetricFamily("edge_model_canary", "1: canary.", labels=["model", "version"])
    agreement = GaugeMetricFamily(
        "edge_model_shadow_agreement", "Shadow agreement.", labels=["model", "version"]
    )
    for m, s in stats:
        version = version_label(m.version)
        if m.shadow is not None and m.shadow.agreement is not None:
            agreement.add_metric([m.name, version_label(m.shadow.version)],
                                 _short(m.shadow.agreement))
        depth.add_metric([m.name], m.queue_depth)
        depth_max.add_metric([m.name], max(s.queue_max.value(), m.queue_depth))
        rate.add_metric([m.name], _short(s.throughput.per_second()))
        by_code = sorted(s.codes.items()) if exact else _folded(s.codes, code_class)
        for code, n in by_code:
            codes.add_metric([m.name, code], n)
        by_reason = (sorted(s.rejected.items()) if exact else
                     [(r, s.rejected[r]) for r in SUMMARY_REASONS if s.rejected[r]])
        for reason, n in by_reason:
            rejected.add_metric([m.name, reason], n)
        if m.version:
            info.add_metric([m.name, version, digest_label(m.digest), m.provider, m.precision], 1)
        if m.validation_score is not None:
            score.add_metric([m.name, version], _short(m.validation_score))
        if m.rollout:
            canary.add_metric([m.name, version], int(m.rollout == "canary"))
    ready = GaugeMetricFamily("edge_ready", "Ready.", value=int(snap.ready))
    families = [latency, depth, depth_max, *([rate] if exact else []), codes, rejected, info,
                score, canary, agreement, ready]
    if snap.control_plane is not None:
        connected, last_success = snap.control_plane
        if connected is not None:
            families.append(GaugeMetricFamily(
                "edge_control_plane_connected", "Sources reached.", value=int(connected)))
        if last_success is not None:
            families.append(GaugeMetricFamily(
                "edge_model_sync_last_success_timestamp_seconds", "Last sync.",
                value=round(last_success)))
    readings = snap.accelerators if exact else _all_devices(snap.accelerators)
    return [f for f in families if f.samples] + _accelerator_families(readings, exact)


def _all_devices(readings: list[Reading]) -> list[Reading]:
    """The node's accelerators as one: the busiest one's utilisation, memory summed (a reading
    that lacks it is left out of the sum)."""
    if not readings:
        return []

    def total(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) if known else None

    return [Reading(
        device="all", name="",
        utilization_ratio=max(r.utilization_ratio for r in readings),
        memory_used_bytes=total([r.memory_used_bytes for r in readings]),
        memory_total_bytes=total([r.memory_total_bytes for r in readings]),
    )]


def _accelerator_families(readings: list[Reading], exact: bool) -> list[Metric]:
    if not readings:
        return []
    util = GaugeMetricFamily(
        "edge_accelerator_utilization_ratio", "Busy" + ("." if exact else " (busiest)."),
        labels=["device", "name"] if exact else ["device"],
    )
    used = GaugeMetricFamily("edge_accelerator_memory_used_bytes", "Used.", labels=["device"])
    total = GaugeMetricFamily("edge_accelerator_memory_total_bytes", "Size.", labels=["device"])
    temp = GaugeMetricFamily(
        "edge_accelerator_temperature_celsius", "Temperature.", labels=["device"]
    )
    for r in readings:
        util.add_metric([r.device, r.name] if exact else [r.device], _short(r.utilization_ratio))
        if r.memory_used_bytes is not None:
            used.add_metric([r.device], r.memory_used_bytes)
        if r.memory_total_bytes is not None:
            total.add_metric([r.device], r.memory_total_bytes)
        if r.temperature_celsius is not None:
            temp.add_metric([r.device], r.temperature_celsius)
    return [f for f in (util, used, total, temp) if f.samples]


def detail_families(recorder: Recorder, snap: Snapshot) -> list[Metric]:
    """What only the full ``/metrics`` carries: stages, histograms, cameras."""
    names = [m.name for m in snap.models if m.name in recorder.models]
    stages = _summary(
        "edge_stage_latency_seconds",
        f"Latency of each stage over the last {recorder.window_s:g} s (DDSketch, 1%).",
        (
            ({"model": n, "stage": st}, recorder.models[n].stages[st])
            for n in names
            for st in STAGES
        ),
    )
    total = HistogramMetricFamily(
        "edge_request_duration_seconds", "End-to-end request latency since start.", labels=["model"]
    )
    per_stage = HistogramMetricFamily(
        "edge_stage_duration_seconds",
        "Latency of each stage since start.",
        labels=["model", "stage"],
    )
    for n in names:
        s = recorder.models[n]
        total.add_metric([n], s.latency_histogram.cumulative(), s.latency_histogram.sum)
        for st in STAGES:
            h = s.stage_histograms[st]
            per_stage.add_metric([n, st], h.cumulative(), h.sum)
    events = CounterMetricFamily(
        "edge_batcher_events",
        "What the active version's queue saw since it loaded: failed_batch (a batch raised and "
        "was re-run one input at a time), expired (deadline passed before the run), overload "
        "(a standing queue was recognised), relayout (the CPU thread layout switched).",
        labels=["model", "version", "event"],
    )
    for m in snap.models:
        if m.version:
            version = version_label(m.version)
            events.add_metric([m.name, version, "failed_batch"], m.failed_batches)
            events.add_metric([m.name, version, "expired"], m.expired)
            events.add_metric([m.name, version, "overload"], m.overload_episodes)
            events.add_metric([m.name, version, "relayout"], m.relayouts)
    shadow_samples = CounterMetricFamily(
        "edge_model_shadow_samples", "Live requests also run on the shadow version and compared.",
        labels=["model", "version"],
    )
    rollbacks = CounterMetricFamily(
        "edge_model_rollbacks", "Swaps undone within their bake (since start).", labels=["model"]
    )
    for m in snap.models:
        if m.shadow is not None:
            shadow_samples.add_metric([m.name, version_label(m.shadow.version)],
                                      m.shadow.samples)
        if m.rollbacks:
            rollbacks.add_metric([m.name], m.rollbacks)
    cameras = CounterMetricFamily(
        "edge_camera_frames",
        f"Frames by X-Camera-Id (at most {recorder.max_cameras} cameras; the rest as 'other').",
        labels=["model", "camera"],
    )
    for (model, camera), frames in sorted(recorder.cameras.items()):
        cameras.add_metric([model, camera], frames)
    return [f for f in (stages, total, per_stage, events, shadow_samples, rollbacks, cameras)
            if f.samples]


def render_summary(recorder: Recorder, snap: Snapshot) -> bytes:
    return generate_latest(_Families(summary_families(recorder, snap)))


def render_full(recorder: Recorder, snap: Snapshot) -> bytes:
    families = [*summary_families(recorder, snap, exact=True), *detail_families(recorder, snap)]
    runtime = CollectorRegistry()  # private: nothing is registered globally
    ProcessCollector(registry=runtime)
    PlatformCollector(registry=runtime)
    GCCollector(registry=runtime)
    families.extend(runtime.collect())
    return generate_latest(_Families(families))
