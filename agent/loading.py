"""Loading one model version: sessions, warm-up, its batching queue. Nothing is served yet;
the service installs the result (at start, or in a hot swap beside the running version)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.batcher import Batcher, Instance
from agent.settings import ModelSettings, Settings
from inference import ModelLoadError, SessionConfig, file_digest
from inference.cpu import lower_thread_priority
from inference.kinds import AUTO, Servable, model_kinds, sniff_kind


@dataclass
class LoadedVersion:
    digest: str
    kind: str  # "yolov8" or "tensor": told from the graph where the settings say "auto"
    runner: Servable  # instance 0: the version's metadata
    runners: list[Servable]
    batcher: Batcher[Any, Any]

    @property
    def instances(self) -> int:
        return len(self.runners)


def session_config(settings: Settings) -> SessionConfig:
    runtime = settings.runtime
    return SessionConfig(
        providers=tuple(runtime.providers),
        intra_op_threads=runtime.intra_op_threads,
        allow_spinning=runtime.allow_spinning,
        cache_dir=settings.state_dir,
        device_id=runtime.device_id,
        trt_fp16=runtime.trt_fp16,
        trt_int8=runtime.trt_int8,
    )


async def load_version(
    settings: Settings,
    cfg: ModelSettings,
    path: Path,
    sha256: str,
    on_depth: Callable[[int], None] | None = None,
    on_warming: Callable[[], None] | None = None,
    kind: str | None = None,
) -> LoadedVersion:
    """Verify, load ``batching.instances`` sessions, warm each up, start a batcher.
    ``kind``: the version's own (its sidecar's), else the settings'; "auto" reads the graph."""
    batching = settings.batching_for(cfg)
    digest = await asyncio.to_thread(file_digest, path)
    if sha256 and digest != sha256:
        raise ModelLoadError(f"{path} has sha256 {digest}, expected {sha256}: the file is corrupt")
    kind = kind or cfg.kind
    if kind == AUTO:
        kind = await asyncio.to_thread(sniff_kind, path)
    loader = model_kinds()[kind]
    names = dict(enumerate(cfg.names)) or None
    config = session_config(settings)
    # One thread per instance runs its session for good, and creates it: ONNX Runtime's pool
    # threads are started by the creating thread and inherit its (lowered) priority.
    executors = [
        ThreadPoolExecutor(
            1,
            thread_name_prefix=f"infer-{cfg.name}-{i}",
            initializer=lower_thread_priority,
            initargs=(settings.runtime.worker_nice,),
        )
        for i in range(batching.instances)
    ]
    loop = asyncio.get_running_loop()
    try:
        runners: list[Servable] = [
            await loop.run_in_executor(ex, loader, path, config, names, digest)
            for ex in executors
        ]
        fixed = runners[0].max_batch
        max_batch = min(batching.max_batch, fixed) if fixed else batching.max_batch
        pad = batching.pad_batches == "on" or (
            batching.pad_batches == "auto" and runners[0].provider != "cpu"
        )
        padded = max_batch > 1 and pad and all(r.fix_batch(max_batch) for r in runners)
        if on_warming is not None:
            on_warming()
        for runner, ex in zip(runners, executors, strict=True):
            if not padded:  # padded, batch 1 runs as a full batch: one shape to warm up
                await loop.run_in_executor(ex, runner.warmup, 1)
            if max_batch > 1:
                await loop.run_in_executor(ex, runner.warmup, max_batch)
    except BaseException:
        for ex in executors:
            ex.shutdown(wait=False, cancel_futures=True)
        raise
    batcher = Batcher(
        cfg.name,
        [Instance(run=r.infer, executor=ex) for r, ex in zip(runners, executors, strict=True)],
        max_batch=max_batch,
        max_delay_s=batching.max_delay_ms / 1000,
        max_queue=batching.max_queue,
        standing_queue_s=batching.standing_queue_ms / 1000,
        on_depth=on_depth,
    )
    return LoadedVersion(digest, kind, runners[0], runners, batcher)
