"""``load_version``: batch padding is chosen by provider (real CPU sessions; no GPU here, so the
GPU side of ``auto`` is the provider check alone)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from support import TINY_MODEL

from agent.loading import VersionSpec, load_version, spec_from_settings, spec_from_sidecar
from agent.settings_loader import load_settings
from inference.session import file_digest


@pytest.mark.parametrize(("mode", "padded"), [("auto", None), ("on", 4), ("off", None)])
async def test_batches_are_padded_only_where_asked(mode: str, padded: int | None) -> None:
    settings = load_settings(
        environ={},
        overrides={
            "models": [f"m={TINY_MODEL}"],
            "runtime.providers": ["cpu"],
            "batching.max_batch": 4,
            "batching.pad_batches": mode,
        },
    )
    cfg = settings.models[0]
    spec = VersionSpec(TINY_MODEL, "file", file_digest(TINY_MODEL))
    loaded = await load_version(settings, cfg, spec)
    try:
        assert loaded.runners[0]._pad_to == padded  # auto: CPU padding would be wasted work
    finally:
        await loaded.batcher.close(1)


async def test_inference_threads_run_below_the_event_loop() -> None:
    settings = load_settings(
        environ={},
        overrides={"models": [f"m={TINY_MODEL}"], "runtime.providers": ["cpu"],
                   "runtime.worker_nice": 4},
    )
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    loaded = await load_version(
        settings, settings.models[0], VersionSpec(TINY_MODEL, "file", file_digest(TINY_MODEL))
    )
    try:
        executor = loaded.batcher._instances[0].executor
        tid = executor.submit(threading.get_native_id).result()
        assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, base + 4)
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == base
    finally:
        await loaded.batcher.close(1)


def test_a_bundled_version_is_read_from_its_sidecar_when_it_loads():
    (defects,) = load_settings(environ={}, overrides={
        "models": [{"name": "line3", "bundled": "defects", "version": "1.0.0-line3"}]
    }).models
    spec = spec_from_settings(defects)
    assert spec.path.is_file()
    assert (spec.kind, spec.source, spec.version) == ("yolov8", "bundled", "1.0.0-line3")
    assert spec.labels == ("scratch", "dent", "hole", "stain")
    assert len(spec.sha256) == 64
    assert set(spec.thresholds) <= {"conf", "iou", "max_det"}


def test_a_sidecar_names_its_own_labels_and_thresholds():
    spec = spec_from_sidecar(
        Path("/m.onnx"),
        {"version": "2.0", "kind": "yolov8", "sha256": "ab" * 32, "labels": ["a", "b"],
         "thresholds": {"conf": 0.4, "iou": 0.5, "other": 1}},
        "oci://r/m:2.0",
    )
    assert (spec.version, spec.kind, spec.labels) == ("2.0", "yolov8", ("a", "b"))
    assert spec.thresholds == {"conf": 0.4, "iou": 0.5}
    assert spec.sha256 == "ab" * 32
