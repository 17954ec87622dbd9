"""Loading one model version: sessions, warm-up, its batching queue, and the record that will
name it. Nothing is served yet: the service publishes the record (at start, or in a hot swap
beside the running version)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.batcher import Batcher, Instance
from agent.kinds import kind_adapters
from agent.precision import ChoiceStore, PrecisionChoice, VariantFile, build_runner, select
from agent.records import VersionRecord
from agent.settings import ModelSettings, Settings
from agent.thread_layout import ADAPTIVE, AdaptiveLayout, choose_layout, inference_executor
from inference import ModelLoadError, SessionConfig, file_digest
from inference.bundled import BUNDLE_ROOT, read_bundle
from inference.golden import GoldenSpec, golden_spec
from inference.kinds import AUTO, Servable, sniff_kind
from inference.session import first_provider
from inference.variants import FP32, VariantEntry, sidecar_variants
from inference.yolo import Thresholds


@dataclass(frozen=True)
class VersionSpec:
    """A version to load: its file and what its sidecar says of it."""

    path: Path
    source: str  # "bundled", "file", or the manifest source it came from
    sha256: str = ""  # expected digest; empty: not checked
    version: str = ""  # empty: the first 12 hex digits of the file's sha256
    kind: str = AUTO  # the sidecar's; "auto": the settings', else read off the graph
    labels: tuple[str, ...] = ()  # the sidecar's; empty: the ONNX metadata's
    thresholds: dict[str, float] = field(default_factory=dict)  # the sidecar's conf/iou/max_det
    golden: GoldenSpec | None = None  # the golden set it carries (its sidecar's ``golden``)
    variants: tuple[VariantFile, ...] = ()  # its lower-precision files on this node
    max_drop: float | None = None  # the fleet manifest's, for choosing a variant; None: unset


def spec_from_sidecar(path: Path, sidecar: dict[str, Any], source: str,
                      sha256: str = "", golden_path: Path | None = None,
                      variant_path: Callable[[VariantEntry], Path | None] | None = None,
                      ) -> VersionSpec:
    """The version a sidecar (``model.json``) describes, its file at ``path``; its golden set
    at ``golden_path`` (None: the version is taken without it); each of its variants where
    ``variant_path`` says (None there, or no ``variant_path``: taken without it)."""
    variants = []
    for entry in sidecar_variants(sidecar, f"{source}: sidecar") if variant_path else []:
        at = variant_path(entry) if variant_path else None
        if at is not None:
            variants.append(VariantFile(entry.precision, at, entry.sha256, entry.score))
    raw = sidecar.get("thresholds")
    thresholds = {k: float(v) for k, v in raw.items()
                  if k in ("conf", "iou", "max_det")} if isinstance(raw, dict) else {}
    labels = sidecar.get("labels")
    return VersionSpec(
        path=path,
        source=source,
        sha256=sha256 or str(sidecar.get("sha256", "")),
        version=str(sidecar.get("version", "")),
        kind=str(sidecar.get("kind", AUTO)),
        labels=tuple(str(n) for n in labels) if isinstance(labels, list) else (),
        thresholds=thresholds,
        golden=golden_spec(sidecar["golden"], golden_path, f"{source}: sidecar")
        if golden_path is not None and "golden" in sidecar else None,
        variants=tuple(variants),
    )


def spec_from_settings(cfg: ModelSettings) -> VersionSpec:
    """The version the settings name: a bundled model's (its sidecar, read now) or a file."""
    if cfg.bundled:
        bundle = read_bundle(BUNDLE_ROOT / cfg.bundled)
        spec = spec_from_sidecar(bundle.model_path, bundle.sidecar, "bundled",
                                 golden_path=bundle.golden_path,
                                 variant_path=lambda v: bundle.folder / v.file)
        return dataclasses.replace(spec, version=cfg.version) if cfg.version else spec
    return VersionSpec(path=cfg.path, source="file", sha256=cfg.sha256, version=cfg.version,
                       kind=cfg.kind)


def model_golden(cfg: ModelSettings) -> GoldenSpec | None:
    """The golden set of the model itself, for a version that carries none: a bundled model's
    (its versions from a fleet manifest are scored on the set shipped with it)."""
    return spec_from_settings(cfg).golden if cfg.bundled else None


@dataclass
class LoadedVersion:
    digest: str
    kind: str  # "yolov8" or "tensor": told from the graph where the settings say "auto"
    runner: Servable  # instance 0: the version's metadata
    runners: list[Servable]
    batcher: Batcher[Any, Any]
    precision: PrecisionChoice | None = None  # which of the version's precisions serves, why

    @property
    def instances(self) -> int:
        return self.batcher.instances

    def record(self, cfg: ModelSettings, spec: VersionSpec, rollout: str = "") -> VersionRecord:
        """The complete record of this version, ready to publish: settings override the
        version's own thresholds (its sidecar's), explicitly, field by field."""
        adapter = kind_adapters()[self.kind]
        own = spec.thresholds
        defaults = Thresholds(
            conf=cfg.conf if cfg.conf is not None else float(own.get("conf", 0.25)),
            iou=cfg.iou if cfg.iou is not None else float(own.get("iou", 0.7)),
            max_det=cfg.max_det if cfg.max_det is not None else int(own.get("max_det", 300)),
        )
        return VersionRecord(
            model=cfg.name,
            kind=adapter,
            version=spec.version or self.digest[:12],
            digest=self.digest,
            labels=adapter.labels(self.runner),
            provider=self.runner.provider,
            source=spec.source,
            runner=self.runner,
            batcher=self.batcher,
            defaults=defaults,
            rollout=rollout,
            golden=spec.golden or model_golden(cfg),
            precision=self.precision,
        )


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
        openvino=runtime.openvino,
    )


async def load_version(
    settings: Settings,
    cfg: ModelSettings,
    spec: VersionSpec,
    on_depth: Callable[[int], None] | None = None,
    on_warming: Callable[[], None] | None = None,
) -> LoadedVersion:
    """Verify, load ``batching.instances`` sessions, warm each up, start a batcher. The kind
    is the version's own (its sidecar's), else the settings'; "auto" reads the graph. Class
    names: the settings' override, else the version's own, else the ONNX metadata's."""
    batching = settings.batching_for(cfg)
    path, sha256 = spec.path, spec.sha256
    digest = await asyncio.to_thread(file_digest, path)
    if sha256 and digest != sha256:
        raise ModelLoadError(f"{path} has sha256 {digest}, expected {sha256}: the file is corrupt")
    kind = spec.kind if spec.kind != AUTO else cfg.kind
    if kind == AUTO:
        kind = await asyncio.to_thread(sniff_kind, path)
    names = dict(enumerate(cfg.names or spec.labels)) or None
    config = session_config(settings)
    nice = settings.runtime.worker_nice
    cores = config.threads()
    # (in a thread: asking for OpenVINO imports it, which takes a second and more)
    provider = await asyncio.to_thread(first_provider, config)
    layout = choose_layout(settings.runtime.thread_layout, provider, cores)
    if layout is not None:  # one session, as many inference threads as the layout has
        config = dataclasses.replace(config, intra_op_threads=layout.intra_op_threads)
    # Which precision serves (agent.precision): fp32 unless a faster variant scores within
    # max_drop of it on the golden set, or the settings pin one.
    selected = await select(
        model=cfg.name, kind=kind, files=[VariantFile(FP32, path, digest), *spec.variants],
        golden=spec.golden or model_golden(cfg), pinned=cfg.precision, max_drop=spec.max_drop,
        default_max_drop=settings.runtime.precision_max_drop, config=config,
        provider=provider, names=names, store=ChoiceStore(settings.state_dir),
    )

    def loader(i: int) -> Servable:  # the chosen file's digest is checked once
        return build_runner(kind, selected.path, selected.file, config, names,
                            check=i == 0 and selected.file.precision != FP32)

    # One thread per instance runs its session for good, and creates it: ONNX Runtime's pool
    # threads are started by the creating thread and inherit its (lowered) priority.
    executors = [inference_executor(cfg.name, i, nice)
                 for i in range(1 if layout else batching.instances)]
    loop = asyncio.get_running_loop()
    try:
        runners: list[Servable] = [
            await loop.run_in_executor(ex, loader, i) for i, ex in enumerate(executors)
        ]
        fixed = runners[0].max_batch
        max_batch = min(batching.max_batch, fixed) if fixed else batching.max_batch
        pad = batching.pad_batches == "on" or (
            batching.pad_batches == "auto" and runners[0].provider not in ("cpu", "openvino")
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
    adaptive = None
    if layout is not None:
        adaptive = AdaptiveLayout(cfg.name, runners[0], config, layout, cores, nice,
                                  adaptive=settings.runtime.thread_layout == ADAPTIVE)
        instances = adaptive.instances(executors[0])
    else:
        instances = [Instance(run=r.infer, executor=ex)
                     for r, ex in zip(runners, executors, strict=True)]
    batcher = Batcher(
        cfg.name,
        instances,
        max_batch=max_batch,
        max_delay_s=batching.max_delay_ms / 1000,
        max_queue=batching.max_queue,
        standing_queue_s=batching.standing_queue_ms / 1000,
        on_depth=on_depth,
    )
    if adaptive is not None:
        adaptive.attach(batcher)
    else:
        batcher.threads["intra_op_threads"] = runners[0].loaded.intra_op_threads
    return LoadedVersion(digest, kind, runners[0], runners, batcher, selected.choice)
