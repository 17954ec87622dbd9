"""The Prometheus texts: promtool-clean, compact, and saying what the recorder measured."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from support import promtool_check

from agent.metrics.accelerators import Reading
from agent.metrics.exposition import ModelSnapshot, Snapshot, render_full, render_summary
from agent.metrics.recorder import BUCKETS, OTHER_CAMERA, Recorder

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
    assert got[("edge_throughput_per_second", frozenset({"model": "fusion"}.items()))] == 20.0
    assert got[("edge_requests_total", frozenset({"model": "defects", "code": "503"}.items()))] == 1
    assert got[("edge_requests_rejected_total",
                frozenset({"model": "defects", "reason": "queue_full"}.items()))] == 1
    info = {"model": "fusion", "version": "1.0.0", "digest": DIGEST, "provider": "tensorrt",
            "precision": "int8"}
    assert got[("edge_model_info", frozenset(info.items()))] == 1
    assert got[("edge_model_validation_score",
                frozenset({"model": "defects", "version": "1.0.0"}.items()))] == 0.8586
    assert got[("edge_accelerator_utilization_ratio",
                frozenset({"device": "0", "name": "NVIDIA H100 80GB HBM3"}.items()))] == 0.41
    assert got[("edge_ready", frozenset())] == 1
    assert not any(dict(labels).get("model") == "nope" for _, labels in got)


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
