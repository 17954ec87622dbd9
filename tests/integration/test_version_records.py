"""Every answer names the version that computed it, also for the requests in flight at a swap.

Two versions of a detector with the same weights and different class names (each sidecar
carries its own labels) are swapped back and forth while cameras post frames: an answer's
``version`` and the labels of its detections must always belong to the same version.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import onnx
from lifecycle_helpers import AUTH, TOKEN

from inference.bundled import BUNDLE_ROOT, read_bundle

DEFECTS = read_bundle(BUNDLE_ROOT / "defects")
LABELS = {
    "1.0.0-a": ["scratch", "dent", "hole", "stain"],
    "2.0.0-b": ["b-scratch", "b-dent", "b-hole", "b-stain"],
}
SWAPS = 20
CAMERAS = 3


def publish_variant(folder: Path, version: str) -> str:
    """The bundled detector's weights as another file (a metadata entry makes the digest
    differ), with its own labels in its sidecar; its file:// URL."""
    model = onnx.load(str(DEFECTS.model_path))
    model.metadata_props.add(key="edge_variant", value=version)
    data = model.SerializeToString()
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(data)
    sidecar = {"name": "cam", "version": version, "kind": "yolov8", "file": "model.onnx",
               "sha256": hashlib.sha256(data).hexdigest(), "labels": LABELS[version]}
    (folder / "model.json").write_text(json.dumps(sidecar))
    return (folder / "model.json").as_uri()


async def test_answers_never_name_one_version_and_carry_anothers_labels(
    tmp_path, settings_factory, client_factory
):
    sources = {v: publish_variant(tmp_path / "share" / v, v) for v in LABELS}
    manifest = tmp_path / "fleet.yaml"
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    first = next(iter(LABELS))
    manifest.write_text(json.dumps({"models": {"cam": {"stable": {"source": sources[first]}}}}))
    settings = settings_factory(**{
        # A file with no golden set: the swaps are not gated, so they come quickly.
        "models": [{"name": "cam", "path": str(DEFECTS.model_path)}],
        "lifecycle.manifest": str(manifest),
        "lifecycle.poll_interval_s": 3600,
        "lifecycle.watch_interval_s": 0,
        "admin.token_file": str(token),
        # Closed-loop cameras only: no shedding to tell apart from a failed answer.
        "batching.max_queue": 64,
        "batching.standing_queue_ms": 0,
    })
    client = await client_factory(settings)
    # From the configured file to the first published version (the first sync may have run
    # on its own already), before any camera posts.
    report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
    assert report["report"]["cam"].split(" (")[0] in (f"swapped to {first}", f"running {first}")
    frames = [p.read_bytes() for p in sorted((DEFECTS.folder / "golden").glob("*.jpg"))[:8]]
    answers: list[tuple[str, set[str]]] = []
    failures: list[str] = []
    stop = asyncio.Event()

    async def camera(index: int) -> None:
        i = index
        while not stop.is_set():
            resp = await client.post("/v1/models/cam/detect?conf=0.1", data=frames[i % 8],
                                     headers={"Content-Type": "image/jpeg"})
            body = await resp.json()
            if resp.status != 200:
                failures.append(f"{resp.status} {body}")
                continue
            answers.append((body["version"], {d["label"] for d in body["detections"]}))
            i += 1

    cameras = [asyncio.create_task(camera(i)) for i in range(CAMERAS)]
    try:
        versions = list(LABELS)
        for n in range(1, SWAPS + 1):
            target = versions[n % 2]
            manifest.write_text(
                json.dumps({"models": {"cam": {"stable": {"source": sources[target]}}}})
            )
            report = await (await client.post("/v1/admin/sync", headers=AUTH)).json()
            assert report["report"]["cam"].startswith(f"swapped to {target}"), report
            await asyncio.sleep(0.05)  # some traffic on each version
    finally:
        stop.set()
        await asyncio.gather(*cameras)
    assert not failures, failures[:5]
    mismatched = [(v, labels) for v, labels in answers if not labels <= set(LABELS[v])]
    by_version = {v: sum(1 for a, _ in answers if a == v) for v in LABELS}
    print(f"{len(answers)} answers over {SWAPS} swaps: {by_version}")
    assert not mismatched, mismatched[:5]
    assert all(count > 0 for count in by_version.values()), by_version
    # Both label sets were really seen: the check above had something to check.
    seen = set().union(*(labels for _, labels in answers))
    assert seen & set(LABELS["1.0.0-a"]), seen
    assert seen & set(LABELS["2.0.0-b"]), seen
