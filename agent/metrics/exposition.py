"""The two Prometheus texts: the compact ``/metrics/summary`` and the full ``/metrics``.

Both are rendered by prometheus_client from metric families built at scrape time from the
recorder and the models' state; nothing is registered globally.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
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


def _summary(
    name: str, doc: str, series: Iterable[tuple[dict[str, str], SlidingQuantiles]]
) -> Metric:
    family = Metric(name, doc, "summary")
    for labels, window in series:
        summary = window.summary(QUANTILES)
        for q, value in summary.quantiles.items():
            family.add_sample(name, {**labels, "quantile": str(q)}, value)
        family.add_sample(name + "_count", labels, summary.count)
        family.add_sample(name + "_sum", labels, summary.sum)
    return family


def summary_families(recorder: Recorder, snap: Snapshot) -> list[Metric]:
    window = f"over {recorder.window_s:g} s"
    stats = [(m, recorder.models[m.name]) for m in snap.models if m.name in recorder.models]
    latency = _summary(
        "edge_inference_latency_seconds",
        f"End-to-end latency {window} (DDSketch, 1% error).",
        (({"model": m.name}, s.latency) for m, s in stats),
    )
    depth = GaugeMetricFamily("edge_queue_depth", "Admitted, not yet running.", labels=["model"])
    depth_max = GaugeMetricFamily(
        "edge_queue_depth_max", f"Max queue depth {window}.", labels=["model"]
    )
    rate = GaugeMetricFamily(
        "edge_throughput_per_second", f"Answers per second {window}.", labels=["model"]
    )
    codes = CounterMetricFamily(
        "edge_requests", "Requests by HTTP status code.", labels=["model", "code"]
    )
    rejected = CounterMetricFamily(
        "edge_requests_rejected", "Requests refused, by reason.", labels=["model", "reason"]
    )
    info = GaugeMetricFamily(
        "edge_model_info",
        "Model being served (always 1).",
        labels=["model", "version", "digest", "provider", "precision"],
    )
    score = GaugeMetricFamily(
        "edge_model_validation_score",
        "Golden-set score on this node.",
        labels=["model", "version"],
    )
    canary = GaugeMetricFamily(
        "edge_model_canary",
        "1 when this node runs the model's canary version, 0 stable.",
        labels=["model", "version"],
    )
    agreement = GaugeMetricFamily(
        "edge_model_shadow_agreement",
        "Agreement of the shadow version with the live answers over its last samples "
        "(detectors: F1 at IoU 0.5, same class; tensor models: same argmax).",
        labels=["model", "version"],
    )
    for m, s in stats:
        if m.shadow is not None and m.shadow.agreement is not None:
            agreement.add_metric([m.name, m.shadow.version], m.shadow.agreement)
        depth.add_metric([m.name], m.queue_depth)
        depth_max.add_metric([m.name], max(s.queue_max.value(), m.queue_depth))
        rate.add_metric([m.name], s.throughput.per_second())
        for code, n in sorted(s.codes.items()):
            codes.add_metric([m.name, code], n)
        for reason, n in sorted(s.rejected.items()):
            rejected.add_metric([m.name, reason], n)
        if m.version:
            info.add_metric([m.name, m.version, m.digest, m.provider, m.precision], 1)
        if m.validation_score is not None:
            score.add_metric([m.name, m.version], m.validation_score)
        if m.rollout:
            canary.add_metric([m.name, m.version], int(m.rollout == "canary"))
    ready = GaugeMetricFamily("edge_ready", "1 when /health answers 200.", value=int(snap.ready))
    families = [latency, depth, depth_max, rate, codes, rejected, info, score, canary,
                agreement, ready]
    if snap.control_plane is not None:
        connected, last_success = snap.control_plane
        if connected is not None:
            families.append(GaugeMetricFamily(
                "edge_control_plane_connected", "1 when the fleet manifest and model sources "
                "answered at the last sync.", value=int(connected)))
        if last_success is not None:
            families.append(GaugeMetricFamily(
                "edge_model_sync_last_success_timestamp_seconds",
                "When the last complete model sync finished (Unix time).", value=last_success))
    return [f for f in families if f.samples] + _accelerator_families(snap.accelerators)


def _accelerator_families(readings: list[Reading]) -> list[Metric]:
    if not readings:
        return []
    util = GaugeMetricFamily(
        "edge_accelerator_utilization_ratio",
        "Busy fraction.",
        labels=["device", "name"],
    )
    used = GaugeMetricFamily(
        "edge_accelerator_memory_used_bytes", "Memory in use.", labels=["device"]
    )
    total = GaugeMetricFamily(
        "edge_accelerator_memory_total_bytes", "Memory size.", labels=["device"]
    )
    temp = GaugeMetricFamily(
        "edge_accelerator_temperature_celsius", "Temperature.", labels=["device"]
    )
    for r in readings:
        util.add_metric([r.device, r.name], r.utilization_ratio)
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
            events.add_metric([m.name, m.version, "failed_batch"], m.failed_batches)
            events.add_metric([m.name, m.version, "expired"], m.expired)
            events.add_metric([m.name, m.version, "overload"], m.overload_episodes)
            events.add_metric([m.name, m.version, "relayout"], m.relayouts)
    shadow_samples = CounterMetricFamily(
        "edge_model_shadow_samples", "Live requests also run on the shadow version and compared.",
        labels=["model", "version"],
    )
    rollbacks = CounterMetricFamily(
        "edge_model_rollbacks", "Swaps undone within their bake (since start).", labels=["model"]
    )
    for m in snap.models:
        if m.shadow is not None:
            shadow_samples.add_metric([m.name, m.shadow.version], m.shadow.samples)
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
    families = [*summary_families(recorder, snap), *detail_families(recorder, snap)]
    runtime = CollectorRegistry()  # private: nothing is registered globally
    ProcessCollector(registry=runtime)
    PlatformCollector(registry=runtime)
    GCCollector(registry=runtime)
    families.extend(runtime.collect())
    return generate_latest(_Families(families))
