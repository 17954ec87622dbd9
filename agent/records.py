"""One immutable record per served version, and the model that holds the reference to it.

A request takes its model's record once, at admission, and everything about its answer comes
from that record: the runner and queue that compute it, and the version, labels and metric
labels that name it. A swap builds the new record completely and replaces the reference in one
step (:meth:`agent.service.ModelService.publish`, the only writer); nothing changes a
published record, so an answer can never name one version and carry another's boxes.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any

from agent.batcher import Batcher
from agent.kinds import KindAdapter, Signature
from agent.precision import PrecisionChoice
from agent.settings import ModelSettings
from inference.golden import GoldenSpec
from inference.kinds import Servable
from inference.yolo import Thresholds

UNCHECKED = "unchecked: no golden set"


class LoadState(str, enum.Enum):
    """Where a model is in loading its first version (a swap never leaves READY)."""

    PENDING = "pending"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    FAILED = "failed"


@dataclass(frozen=True)
class VersionRecord:
    model: str
    kind: KindAdapter
    version: str
    digest: str
    labels: tuple[str, ...]
    provider: str
    source: str  # "bundled", "file", or the manifest source it came from
    runner: Servable  # instance 0: the version's metadata
    batcher: Batcher[Any, Any]
    defaults: Thresholds  # for a detect request that sets none
    rollout: str = ""  # "stable" or "canary" once a fleet manifest assigned this node
    golden: GoldenSpec | None = None  # its own golden set, else the model's; None: none
    score: float | None = None  # golden-set score measured on this node, on ``golden``
    scored_at: float | None = None  # time.monotonic() of that measurement
    gate: str = ""  # how the swap that brought it in judged it ("passed: ...", "unchecked: ...")
    precision: PrecisionChoice | None = None  # which of its precisions serves, and why

    @property
    def precision_name(self) -> str:
        return self.precision.precision if self.precision is not None else "fp32"

    def signature(self) -> Signature:
        return self.kind.signature(self.runner)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind.name,
            "version": self.version,
            "digest": f"sha256:{self.digest}",
            "provider": self.provider,
            "source": self.source,
            "precision": self.precision_name,
        }
        if self.precision is not None:
            out["precision_choice"] = self.precision.describe()
        if self.rollout:
            out["rollout"] = self.rollout
        if self.golden is not None:
            out["golden"] = self.golden.describe()
        if self.golden is None or self.gate:  # a version with no golden set is never checked
            out["gate"] = self.gate or UNCHECKED
        if self.score is not None and self.scored_at is not None:
            out["validation"] = {
                "score": self.score,
                "age_s": round(time.monotonic() - self.scored_at, 3),
            }
        out.update(self.kind.describe(self.runner))
        out["queue_depth"] = self.batcher.depth
        out["max_batch"] = self.batcher.max_batch
        out["threads"] = dict(self.batcher.threads)
        return out


@dataclass
class Model:
    """A configured model: its settings, how loading went, and its active version's record."""

    settings: ModelSettings
    state: LoadState = LoadState.PENDING
    error: str | None = None
    active: VersionRecord | None = None

    @property
    def name(self) -> str:
        return self.settings.name

    @property
    def kind(self) -> str:
        """The active version's kind; before one loads, the settings' (maybe "auto")."""
        return self.active.kind.name if self.active is not None else self.settings.kind

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "version": "", "digest": "",
                               "state": self.state.value, "provider": "",
                               "source": self.settings.source}
        if self.active is not None:
            out.update(self.active.describe())
        if self.error:
            out["error"] = self.error
        return out
