"""The settings' schema: one typed object, its defaults and its validation.

Loaded once at start-up (:mod:`agent.settings_loader`: file, environment, flags) and passed
down. An unknown key or a bad value stops start-up with a message naming the key
(``SettingsError``), never a traceback from deep inside the daemon. Validation reads nothing
from disk: a bundled model's sidecar is read when it loads.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from agent.config_file import SettingsError
from agent.precision import precision_choices
from agent.thread_layout import THREAD_LAYOUTS
from inference.bundled import BUNDLED_NAMES
from inference.kinds import AUTO, model_kinds

# A model's name is a label of every /metrics/summary series of it: its length is what keeps
# the summary within 4 KB for two models (agent.metrics.exposition).
MAX_MODEL_NAME = 16
MODEL_NAME_RE = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_MODEL_NAME - 1}}}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class BatchingSettings:
    max_batch: int = 4  # images per session.run; clamped to a static batch axis
    # How long the first queued image waits for company. 0: batch only what is already queued
    # (no per-frame gain from batching on CPU); raise it on GPUs, where batches pay.
    max_delay_ms: float = 0.0
    # Admitted, not yet running; beyond: 503 at once. Each queued 640x640 frame holds 1.2 MB
    # of uint8 planes, and on a CPU node 8 frames are already ~0.5 s of waiting.
    max_queue: int = 8
    # A queue that stays longer than one batch's run for this long is overload, not a burst:
    # then a request is admitted only if an instance will be free by the time it is
    # pre-processed, so accepted ones stay near unloaded latency and the rest are shed at once
    # (agent/batcher.py has the rule and when it ends). 0: off (max_queue only).
    standing_queue_ms: float = 250.0
    deadline_ms: float = 0.0  # default per-request deadline; 0 = none (X-Deadline-Ms overrides)
    # Sessions per model, each with its own inference thread: where the threads are fixed
    # (runtime.thread_layout: fixed, or an accelerator); otherwise the layout decides.
    instances: int = 1
    # Pad every batch to max_batch images: "auto" does it on GPU providers, where any change of
    # input shape costs a cuDNN re-plan (50-600 ms a run on an H200), and not on CPU, where
    # padding is only wasted work. "on" / "off" force it.
    pad_batches: str = "auto"

    def validate(self, where: str) -> None:
        _check(self.max_batch >= 1, f"{where}.max_batch", "must be >= 1")
        _check(self.max_delay_ms >= 0, f"{where}.max_delay_ms", "must be >= 0")
        _check(self.max_queue >= 1, f"{where}.max_queue", "must be >= 1")
        _check(self.standing_queue_ms >= 0, f"{where}.standing_queue_ms", "must be >= 0")
        _check(self.deadline_ms >= 0, f"{where}.deadline_ms", "must be >= 0")
        _check(1 <= self.instances <= 64, f"{where}.instances", "must be in 1..64")
        _check(
            self.pad_batches in ("auto", "on", "off"), f"{where}.pad_batches",
            "must be auto, on or off",
        )


@dataclass
class ModelSettings:
    name: str = ""
    path: Path = Path()
    # A model shipped in the package ("defects", "fusion") instead of a path: its file, kind,
    # version, digest, labels and thresholds come from the bundle's sidecar when it loads.
    bundled: str = ""
    # "yolov8" (POST /v1/.../detect), "tensor" (POST /v2/.../infer), or "auto": told from the
    # graph when it loads (one 3-channel NCHW input and a [batch, rows, anchors] output: yolov8)
    kind: str = AUTO
    version: str = ""  # empty: the first 12 hex digits of the file's sha256
    sha256: str = ""  # when set, a file with another digest is refused as corrupt
    # None: the version's own (its sidecar's thresholds), else 0.25 / 0.7 / 300. Set here,
    # they override every version's, the ones a fleet manifest brings in too.
    conf: float | None = None
    iou: float | None = None
    max_det: int | None = None
    # Overrides every version's class names (the sidecar's, else the ONNX metadata's).
    names: list[str] = field(default_factory=list)
    batching: BatchingSettings | None = None  # None: the top-level batching settings
    # Which of a version's precisions serves (agent/precision.py): "auto" measures its
    # variants on this node and serves the fastest within max_drop of fp32 on the golden set;
    # a precision pins it, still only within max_drop when there is a golden set (fp32 when
    # the version has no such variant or it scores too low, with a logged reason).
    precision: str = "auto"

    def validate(self, where: str) -> None:
        _check(
            bool(MODEL_NAME_RE.match(self.name)),
            f"{where}.name",
            f"must be 1-{MAX_MODEL_NAME} letters, digits, '_', '.', '-' starting with a letter "
            "or digit",
        )
        has_path = str(self.path) not in ("", ".")
        if self.bundled:
            _check(
                self.bundled in BUNDLED_NAMES,
                f"{where}.bundled",
                f"must be one of {list(BUNDLED_NAMES)}",
            )
            _check(not has_path, f"{where}.path", "cannot be set with bundled")
        else:
            _check(has_path, f"{where}.path", "or bundled is required")
        kinds = [AUTO, *sorted(model_kinds())]
        _check(self.kind in kinds, f"{where}.kind", f"must be one of {kinds}")
        _check(
            self.sha256 == "" or bool(SHA256_RE.match(self.sha256)),
            f"{where}.sha256",
            "must be 64 lowercase hex digits",
        )
        _check(self.conf is None or 0 <= self.conf <= 1, f"{where}.conf", "must be in [0, 1]")
        _check(self.iou is None or 0 <= self.iou <= 1, f"{where}.iou", "must be in [0, 1]")
        _check(
            self.max_det is None or 1 <= self.max_det <= 10000,
            f"{where}.max_det",
            "must be in 1..10000",
        )
        if self.batching is not None:
            self.batching.validate(f"{where}.batching")
        choices = precision_choices()
        _check(self.precision in choices, f"{where}.precision",
               f"must be one of {', '.join(choices)}")

    @property
    def source(self) -> str:
        return "bundled" if self.bundled else "file"


def bundled_model_settings() -> list[ModelSettings]:
    """What is served when no model is configured: every bundled model, under its own name."""
    return [ModelSettings(name=name, bundled=name) for name in BUNDLED_NAMES]


@dataclass
class RuntimeSettings:
    providers: list[str] = field(default_factory=lambda: ["tensorrt", "cuda", "cpu"])
    intra_op_threads: int = 0  # 0: the cores this process may use
    # How a CPU model uses those cores (agent/thread_layout.py): "adaptive" switches between
    # "wide" (one run on all of them: lowest latency for one camera) and "narrow" (one
    # single-threaded run per core at once: the most frames/s for many) by the load it sees;
    # "wide" / "narrow" pin one; "fixed": batching.instances sessions of intra_op_threads each.
    # Accelerators are always "fixed".
    thread_layout: str = "adaptive"
    preprocess_threads: int = 0  # 0: the cores this process may use
    # Off: an edge node runs other work, and while another job held one of 2 cores, spinning
    # made a single stream's p50 1.7x slower (212 against 126 ms); on an otherwise idle node
    # it is 9% faster (benchmarks/results/2026-12-02-vm-compare-nospin-*.md). When on,
    # spinning stops as each run returns.
    allow_spinning: bool = False
    # Nice added to the compute threads (decode, inference, ONNX Runtime's pools) so the event
    # loop gets a core at once: shedding, /health and the watchdog stay prompt under overload.
    worker_nice: int = 5
    # glibc malloc arenas (0: glibc's default of 8 per core, each keeping freed frames' memory).
    malloc_arenas: int = 2
    device_id: int = 0
    trt_fp16: bool = True
    trt_int8: str = "auto"
    # A lower-precision variant serves only if its golden-set score is at most this far under
    # fp32's on this node; a fleet manifest's max_drop for the model overrides it.
    precision_max_drop: float = 0.01
    # On a CPU node with the OpenVINO runtime installed (the "openvino" extra), the precision
    # gate also measures the version on OpenVINO at fp32 and, where the CPU computes it, bf16,
    # and serves one only where it is faster and scores within max_drop (agent/precision.py).
    openvino: bool = False

    def validate(self, where: str) -> None:
        known = {"tensorrt", "cuda", "openvino", "cpu"}
        bad = [p for p in self.providers if p not in known]
        _check(
            not bad and bool(self.providers),
            f"{where}.providers",
            f"must be a non-empty list of {sorted(known)}, got {self.providers}",
        )
        _check(self.intra_op_threads >= 0, f"{where}.intra_op_threads", "must be >= 0")
        _check(self.preprocess_threads >= 0, f"{where}.preprocess_threads", "must be >= 0")
        _check(self.thread_layout in THREAD_LAYOUTS, f"{where}.thread_layout",
               f"must be one of {', '.join(THREAD_LAYOUTS)}")
        _check(0 <= self.worker_nice <= 19, f"{where}.worker_nice", "must be in [0, 19]")
        _check(self.malloc_arenas >= 0, f"{where}.malloc_arenas", "must be >= 0")
        _check(
            self.trt_int8 in ("auto", "on", "off"), f"{where}.trt_int8", "must be auto, on or off"
        )
        _check(0 <= self.precision_max_drop <= 1, f"{where}.precision_max_drop",
               "must be in [0, 1]")


@dataclass
class LimitSettings:
    max_body_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 50_000_000
    # A body must arrive whole within this long of its headers (slow-body clients: 408).
    body_timeout_s: float = 10.0
    # A connection with no complete request for this long is closed: an idle keep-alive
    # connection, and one dribbling its headers (slowloris), alike.
    idle_timeout_s: float = 15.0
    max_header_bytes: int = 8190  # one header line (request line, or name + value)
    max_headers: int = 64  # header lines per request
    # A request refused before its body was read (503, 404, 415...) whose declared body is at
    # most this big is read and discarded first, so a keep-alive client reads its answer
    # instead of a reset; a bigger or chunked one gets its answer with the connection closed.
    refusal_drain_bytes: int = 8 * 1024 * 1024

    def validate(self, where: str) -> None:
        _check(self.max_body_bytes >= 1024, f"{where}.max_body_bytes", "must be >= 1024")
        _check(self.refusal_drain_bytes >= 0, f"{where}.refusal_drain_bytes", "must be >= 0")
        _check(self.max_image_pixels >= 1, f"{where}.max_image_pixels", "must be >= 1")
        _check(self.body_timeout_s > 0, f"{where}.body_timeout_s", "must be > 0")
        _check(self.idle_timeout_s > 0, f"{where}.idle_timeout_s", "must be > 0")
        _check(
            256 <= self.max_header_bytes <= 1 << 20, f"{where}.max_header_bytes",
            "must be in 256..1048576",
        )
        _check(8 <= self.max_headers <= 1024, f"{where}.max_headers", "must be in 8..1024")


@dataclass
class HealthSettings:
    max_loop_lag_s: float = 2.0  # event loop blocked longer: not live
    max_inference_s: float = 30.0  # one session.run longer: stuck, not live
    loop_probe_interval_s: float = 0.5
    # A model with no batch back for this long gets a self-test inference through its queue...
    selftest_interval_s: float = 10.0
    # ...and a ready model with none back for this long is not live (a wedged GPU answers nothing).
    max_silence_s: float = 60.0

    def validate(self, where: str) -> None:
        _check(self.selftest_interval_s > 0, f"{where}.selftest_interval_s", "must be > 0")
        _check(
            self.max_silence_s > self.selftest_interval_s,
            f"{where}.max_silence_s",
            "must be > selftest_interval_s",
        )
        _check(self.max_loop_lag_s > 0, f"{where}.max_loop_lag_s", "must be > 0")
        _check(self.max_inference_s > 0, f"{where}.max_inference_s", "must be > 0")
        _check(self.loop_probe_interval_s > 0, f"{where}.loop_probe_interval_s", "must be > 0")


@dataclass
class WatchdogSettings:
    # A /dev/watchdog-style device to feed while healthy; empty: no hardware watchdog.
    device: str = ""
    timeout_s: int = 60  # asked of the device (WDIOC_SETTIMEOUT, where the driver allows)
    # How often health is checked and the watchdogs fed; systemd's WATCHDOG_USEC/2 if shorter.
    interval_s: float = 5.0
    extend_timeout_s: float = 120.0  # EXTEND_TIMEOUT_USEC, repeated while models load

    def validate(self, where: str) -> None:
        _check(1 <= self.timeout_s <= 3600, f"{where}.timeout_s", "must be in 1..3600")
        _check(0 < self.interval_s < self.timeout_s, f"{where}.interval_s",
               "must be > 0 and < timeout_s")
        _check(self.extend_timeout_s > 0, f"{where}.extend_timeout_s", "must be > 0")


@dataclass
class ModelSyncSettings:
    """The `lifecycle:` section: model sync from a fleet manifest (the key keeps its name)."""

    # The fleet manifest: a file (a mounted ConfigMap) or an http(s):// URL; empty: no sync,
    # the configured (or bundled) models are served as they are.
    manifest: str = ""
    node_name: str = ""  # the canary cohort key; empty: $NODE_NAME, else the host name
    poll_interval_s: float = 30.0
    watch_interval_s: float = 2.0  # a file manifest is checked this often for a change; 0: not
    keep_versions: int = 3  # cached versions kept per model (the running one included)
    max_model_bytes: int = 2 * 1024**3
    # A second version (a shadowed candidate, the previous one in a bake) is kept loaded only
    # when this much memory stays available beside it: the rest of the node's work needs room.
    min_free_memory_mb: int = 256
    retry_attempts: int = 5  # per download or manifest read, exponential backoff with jitter
    retry_max_s: float = 30.0
    # A connection that connects or sends nothing for this long is dead (a cut uplink can leave
    # a pooled connection silent): the attempt fails and is retried.
    stall_timeout_s: float = 30.0
    # Registries reached over plain HTTP (host:port), e.g. a line's own registry without TLS.
    insecure_registries: list[str] = field(default_factory=list)
    # JSON {"host:port": {"username": ..., "password": ...}} (a mounted Secret); empty: none.
    registry_credentials: str = ""

    def validate(self, where: str) -> None:
        _check(self.poll_interval_s >= 1, f"{where}.poll_interval_s", "must be >= 1")
        _check(self.watch_interval_s >= 0, f"{where}.watch_interval_s", "must be >= 0")
        _check(1 <= self.keep_versions <= 100, f"{where}.keep_versions", "must be in 1..100")
        _check(self.max_model_bytes > 0, f"{where}.max_model_bytes", "must be > 0")
        _check(self.min_free_memory_mb >= 0, f"{where}.min_free_memory_mb", "must be >= 0")
        _check(1 <= self.retry_attempts <= 100, f"{where}.retry_attempts", "must be in 1..100")
        _check(self.retry_max_s > 0, f"{where}.retry_max_s", "must be > 0")
        _check(self.stall_timeout_s > 0, f"{where}.stall_timeout_s", "must be > 0")

    def resolved_node_name(self) -> str:
        return self.node_name or os.environ.get("NODE_NAME", "") or socket.gethostname()


@dataclass
class AdminSettings:
    # Bearer token for /v1/admin/*: from a file (a mounted Secret), else this value (from
    # EDGE_AGENT_ADMIN__TOKEN); neither: admin endpoints off.
    token_file: str = ""
    token_value: str = field(default="", repr=False)

    def validate(self, where: str) -> None:
        pass

    def token(self) -> str:
        """Read at each use, so a rotated Secret takes effect without a restart."""
        if not self.token_file:
            return self.token_value
        try:
            return Path(self.token_file).read_text().strip()
        except OSError:
            return ""


@dataclass
class MetricsSettings:
    window_s: float = 60.0  # sliding window of the quantiles, maxima and rates
    max_cameras: int = 64  # distinct X-Camera-Id label values; beyond: camera="other"
    accelerators: bool = True  # NVML / Jetson sysfs readings where they answer

    def validate(self, where: str) -> None:
        _check(1 <= self.window_s <= 3600, f"{where}.window_s", "must be in [1, 3600]")
        _check(0 <= self.max_cameras <= 10000, f"{where}.max_cameras", "must be in 0..10000")


@dataclass
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    state_dir: Path = field(default_factory=lambda: default_state_dir())
    log_level: str = "info"
    log_format: str = "auto"  # auto: JSON when stderr is not a terminal
    log_requests: bool = False  # ten cameras at 30 fps are 300 lines a second
    drain_grace_s: float = 0.0  # after SIGTERM: keep serving with /health 503 this long
    drain_timeout_s: float = 30.0  # then wait this long for in-flight requests
    # After loading, score versions that have a golden set (their own or the model's) here:
    # edge_model_validation_score. A few seconds of CPU at start-up.
    validate_golden: bool = True
    revalidate_interval_s: float = 3600.0  # then again this often, when idle; 0: never
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    batching: BatchingSettings = field(default_factory=BatchingSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    watchdog: WatchdogSettings = field(default_factory=WatchdogSettings)
    lifecycle: ModelSyncSettings = field(default_factory=ModelSyncSettings)
    admin: AdminSettings = field(default_factory=AdminSettings)
    models: list[ModelSettings] = field(default_factory=list)

    def validate(self) -> Settings:
        _check(0 <= self.port <= 65535, "port", "must be in 0..65535")
        _check(
            self.log_level.lower() in ("debug", "info", "warning", "error"),
            "log_level",
            "must be debug, info, warning or error",
        )
        _check(
            self.log_format in ("auto", "json", "text"), "log_format", "must be auto, json or text"
        )
        _check(self.drain_grace_s >= 0, "drain_grace_s", "must be >= 0")
        _check(self.drain_timeout_s >= 0, "drain_timeout_s", "must be >= 0")
        _check(self.revalidate_interval_s >= 0, "revalidate_interval_s", "must be >= 0")
        self.runtime.validate("runtime")
        self.batching.validate("batching")
        self.limits.validate("limits")
        self.health.validate("health")
        self.metrics.validate("metrics")
        self.watchdog.validate("watchdog")
        self.lifecycle.validate("lifecycle")
        seen: set[str] = set()
        for i, model in enumerate(self.models):
            model.validate(f"models[{i}]")
            _check(model.name not in seen, f"models[{i}].name", f"duplicate name {model.name!r}")
            seen.add(model.name)
        return self

    def batching_for(self, model: ModelSettings) -> BatchingSettings:
        return model.batching or self.batching


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/edge-agent")
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "edge-agent"


def _check(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise SettingsError(f"{key}: {message}")


