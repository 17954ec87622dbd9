"""The Prometheus texts: promtool-clean, compact, and saying what the recorder measured."""

from __future__ import annotations

import dataclasses
import itertools

from prometheus_client.parser import text_string_to_metric_families
from support import promtool_check

from agent.metrics.accelerators import Reading
from agent.metrics.exposition import (
    MAX_VERSION_LABEL,
    SERIES_PER_MODEL,
    ModelSnapshot,
    Snapshot,
    code_class,
    render_full,
    render_summary,
    version_label,
)
from agent.metrics.recorder import BUCKETS, OTHER_CAMERA, Recorder
from agent.settings import MAX_MODEL_NAME
from benchmarks.summary_size import worst_case

DIGEST = "sha256:" + "ab" * 32


class FakeClock:
    now = 500.0

    def __call__(self) -> float:
        return self.now


def busy_recorder() -> tuple[Recorder, Snapshot]:
    clock = FakeClock()
    rec = Recorder(["defects", "fusion"], window_s=60, max_cameras=3, clock=clock)
    for i in range(200):
        timing = {"queue": 0.001, "preprocess": 0.01, "inference": 0.04 + i * 1e-4,
                  "postprocess": 0.002, "total": 0.055 + i * 1e-4}
        rec.observe_request("defects", 200, timing, camera=f"cam-{i % 5}")
        rec.observe_request("fusion", 200, {"queue": 0.0001, "inference": 0.001, "total": 0.002})
        rec.observe_queue("defects", i % 7)
    for code, reason in ((503, "queue_full"), (400, "bad_image"), (413, "too_large"),
                         (504, "deadline"), (415, "unsupported_media_type")):
        rec.observe_request("defects", code, None)
        rec.observe_rejection("defects", reason)
    rec.observe_request("nope", 200, {"total": 1.0})  # not a served model: not a label
    clock.now += 10
    snap = Snapshot(
        ready=True,
        models=[
            ModelSnapshot("defects", "1.0.0", DIGEST, "tensorrt", 3, 0.8586,
                          failed_batches=2, expired=5, overload_episodes=1, relayouts=3),
            ModelSnapshot("fusion", "1.0.0", DIGEST, "tensorrt", 0, 0.97, precision="int8"),
        ],
        accelerators=[Reading("0", "NVIDIA H100 80GB HBM3", 0.41, 2.1e9, 8.5e10, 63.0)],
    )
    return rec, snap


def samples(text: bytes) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_summary_is_promtool_clean_and_under_4_kb_for_two_busy_models():
    rec, snap = busy_recorder()
    text = render_summary(rec, snap)
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == b""
    assert result.stderr == b""
    assert len(text) <= 4096, len(text)


def test_summary_says_what_was_measured():
    rec, snap = busy_recorder()
    got = samples(render_summary(rec, snap))
    p99 = got[("edge_inference_latency_seconds",
               frozenset({"model": "defects", "quantile": "0.99"}.items()))]
    assert abs(p99 - 0.0748) / 0.0748 <= 0.01  # the 198th of 0.0550 .. 0.0749
    count = ("edge_inference_latency_seconds_count", frozenset({"model": "defects"}.items()))
    assert got[count] == 200
    assert got[("edge_queue_depth", frozenset({"model": "defects"}.items()))] == 3
    assert got[("edge_queue_depth_max", frozenset({"model": "defects"}.items()))] == 6
    # Codes by class: 200 x 200, then 400, 413, 415 and 503, 504.
    codes = {dict(lbl)["code"]: v for (name, lbl), v in got.items()
             if name == "edge_requests_total" and dict(lbl)["model"] == "defects"}
    assert codes == {"2xx": 200, "4xx": 3, "5xx": 2}
    reasons = {dict(lbl)["reason"]: v for (name, lbl), v in got.items()
               if name == "edge_requests_rejected_total"}
    assert reasons == {"queue_full": 1}  # the others only in /metrics
    info = {"model": "fusion", "version": "1.0.0", "digest": DIGEST[:19], "provider": "tensorrt",
            "precision": "int8"}
    assert got[("edge_model_info", frozenset(info.items()))] == 1
    assert got[("edge_model_validation_score",
                frozenset({"model": "defects", "version": "1.0.0"}.items()))] == 0.8586
    assert got[("edge_accelerator_utilization_ratio",
                frozenset({"device": "all"}.items()))] == 0.41
    assert got[("edge_ready", frozenset())] == 1
    assert not any(dict(labels).get("model") == "nope" for _, labels in got)
    assert not any(name in ("edge_throughput_per_second", "edge_accelerator_temperature_celsius")
                   for name, _ in got)


def test_full_metrics_keep_every_code_reason_device_and_the_throughput():
    rec, snap = busy_recorder()
    got = samples(render_full(rec, snap))
    assert got[("edge_throughput_per_second", frozenset({"model": "fusion"}.items()))] == 20.0
    codes = {dict(lbl)["code"]: v for (name, lbl), v in got.items()
             if name == "edge_requests_total" and dict(lbl)["model"] == "defects"}
    assert codes == {"200": 200, "400": 1, "413": 1, "415": 1, "503": 1, "504": 1}
    reasons = {dict(lbl)["reason"] for (name, lbl) in got if name == "edge_requests_rejected_total"}
    assert reasons == {"queue_full", "bad_image", "too_large", "deadline",
                       "unsupported_media_type"}
    assert got[("edge_accelerator_utilization_ratio",
                frozenset({"device": "0", "name": "NVIDIA H100 80GB HBM3"}.items()))] == 0.41
    assert got[("edge_accelerator_temperature_celsius", frozenset({"device": "0"}.items()))] == 63


def test_the_summary_folds_several_accelerators_into_one_reading():
    """Fake readings (no GPU here): the busiest device's utilisation, the memory summed."""
    rec, snap = busy_recorder()
    gpus = [Reading("0", "A", 0.2, 1e9, 8e10, 50.0), Reading("1", "B", 0.9, 3e9, 8e10, None),
            Reading("2", "C", 0.5, None, None, 70.0)]
    got = samples(render_summary(rec, dataclasses.replace(snap, accelerators=gpus)))
    accel = {name: v for (name, lbl), v in got.items() if name.startswith("edge_accelerator")}
    assert accel == {"edge_accelerator_utilization_ratio": 0.9,
                     "edge_accelerator_memory_used_bytes": 4e9,
                     "edge_accelerator_memory_total_bytes": 1.6e11}
    assert {dict(lbl)["device"] for (name, lbl) in got if name.startswith("edge_accel")} == {"all"}


def test_a_long_version_is_cut_to_a_bounded_label_and_stays_distinct():
    a, b = "2026.12.01-build.1234567-a", "2026.12.01-build.1234567-b"
    assert len(version_label(a)) == MAX_VERSION_LABEL
    assert version_label(a) != version_label(b)
    assert version_label(a).startswith("2026.12")
    assert version_label("1.2.0") == "1.2.0"
    assert [code_class(c) for c in ("200", "204", "400", "499", "500", "504", "x")] == \
        ["2xx", "2xx", "4xx", "4xx", "5xx", "5xx", "5xx"]


def test_worst_case_summary_of_two_models_fits_4_kb_by_construction():
    """Two models with names at the validated maximum, versions past the label cap, every
    status code and refusal reason counted billions of times, latencies of every magnitude,
    four (fake) GPUs, a fleet manifest (canary, control plane, last sync) and a shadow in each:
    at most 4096 bytes, and a fixed number of series whatever the traffic."""
    text = worst_case(2)
    assert len(text) <= 4096, len(text)
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    got = samples(text)
    first = "m0-".ljust(MAX_MODEL_NAME, "x")
    per_model = [lbl for _, lbl in got if dict(lbl).get("model") == first]
    assert len(per_model) == SERIES_PER_MODEL
    assert len(got) == 2 * SERIES_PER_MODEL + 6  # ready, control plane, last sync, 3 GPU


def test_each_extra_model_adds_a_fixed_increment():
    """What a third (fourth) model costs: the same number of bytes each time, about 1.2 KB."""
    sizes = [len(worst_case(n)) for n in (1, 2, 3, 4)]
    steps = {b - a for a, b in itertools.pairwise(sizes)}
    assert len(steps) == 1, sizes
    assert steps.pop() <= 1250, sizes


def test_full_metrics_have_histograms_stages_cameras_and_process_and_are_promtool_clean():
    rec, snap = busy_recorder()
    text = render_full(rec, snap)
    result = promtool_check(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == b""
    assert result.stderr == b""
    got = samples(text)
    inf = got[("edge_request_duration_seconds_bucket",
               frozenset({"model": "defects", "le": "+Inf"}.items()))]
    assert inf == 200
    le_50ms = got[("edge_request_duration_seconds_bucket",
                   frozenset({"model": "defects", "le": "0.05"}.items()))]
    le_75ms = got[("edge_request_duration_seconds_bucket",
                   frozenset({"model": "defects", "le": "0.075"}.items()))]
    assert (le_50ms, le_75ms) == (0, 200)
    assert "0.075" in map(str, BUCKETS)
    stage = got[("edge_stage_latency_seconds",
                 frozenset({"model": "defects", "stage": "preprocess", "quantile": "0.5"}.items()))]
    assert abs(stage - 0.01) <= 0.0001
    cameras = {dict(lbl)["camera"]: v for (name, lbl), v in got.items()
               if name == "edge_camera_frames_total"}
    assert len(cameras) == 4  # 3 named (max_cameras) + "other"
    assert cameras[OTHER_CAMERA] == 80
    assert ("process_resident_memory_bytes", frozenset()) in got
    events = {dict(lbl)["event"]: v for (name, lbl), v in got.items()
              if name == "edge_batcher_events_total" and dict(lbl)["model"] == "defects"}
    assert events == {"failed_batch": 2, "expired": 5, "overload": 1, "relayout": 3}


def test_nothing_is_invented_for_an_idle_cpu_node():
    rec = Recorder(["defects"])
    snap = Snapshot(False, [ModelSnapshot("defects", "", "", "", 0, None)], [])
    text = render_summary(rec, snap).decode()
    assert "edge_accelerator" not in text
    assert "edge_model_info" not in text  # not loaded yet: no version to report
    assert "edge_model_validation_score" not in text
    assert "quantile=" not in text  # an empty window has no quantiles
    assert 'edge_inference_latency_seconds_count{model="defects"} 0.0' in text
    assert "edge_ready 0.0" in text
