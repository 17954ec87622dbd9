"""The fleet manifest: which version of each model the fleet should run, and the canary rule.

```yaml
models:
  defects:
    stable: {source: "https://models.factory/defects/1.1.0/model.json"}
    canary: {source: "oci://registry.factory:5000/models/defects:1.2.0", percent: 5}
    min_score: 0.80      # a candidate scoring under this on the golden set is refused
    max_drop: 0.02       # ... or scoring more than this under the running version
    require_golden: true # a candidate with no golden set is refused (else: gate unchecked)
    bake_s: 600          # after a swap the previous version stays loaded this long (0: off)
    min_agreement: 0.9   # ... and comes back if the shadow agreement falls under this
    min_samples: 20      # ... over at least this many shadow samples
    shadow: {percent: 10, max_per_s: 2, before_swap_s: 120}
      # live requests also run on the second loaded version: the candidate for up to
      # before_swap_s before its swap (refused under min_agreement), the previous one in the bake
    rollout: {steps: [5, 25, 100], bake_s: 1800, min_nodes: 3}  # the fleet controller's
status:            # written by the fleet controller (``edge-agent fleet``)
  defects: {phase: canary, percent: 5, since: "2026-12-01T10:00:00Z"}
```

The node reads ``models`` only: ``rollout`` (each model's) and the top-level ``status`` belong to
the fleet controller (``agent.fleet``), which checks them; a node ignores both, so a manifest
the controller writes never stops a node syncing.

A node is in a model's canary cohort when
``int(sha256(node_name + "/" + model)[:8], 16) % 100 < percent`` (README, "Model lifecycle";
the fleet's other tools compute the same): stable per node
and model, independent across models, and the same answer on every node of the fleet.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.models.policy import BakePolicy
from agent.shadow import ShadowPolicy
from inference.errors import EdgeError

SCHEMES = ("oci://", "https://", "http://", "file://")


class ManifestError(EdgeError):
    """The fleet manifest is not valid; the message names the entry."""


@dataclass(frozen=True)
class Target:
    source: str
    percent: float = 100.0


@dataclass(frozen=True)
class ModelPlan:
    name: str
    stable: Target
    canary: Target | None = None
    min_score: float = 0.0
    max_drop: float = 1.0
    require_golden: bool = False
    bake: BakePolicy = field(default_factory=BakePolicy)
    max_drop_set: bool = False  # the manifest sets max_drop (else the default above)

    @property
    def variant_max_drop(self) -> float | None:
        """``max_drop`` as the manifest set it (None: unset), for choosing a lower precision,
        whose limit otherwise is the node's ``runtime.precision_max_drop``."""
        return self.max_drop if self.max_drop_set else None

    def choose(self, node_name: str) -> tuple[Target, str]:
        """The target this node runs, and its cohort: ``"canary"`` or ``"stable"``."""
        if self.canary is not None and in_canary(node_name, self.name, self.canary.percent):
            return self.canary, "canary"
        return self.stable, "stable"


def in_canary(node_name: str, model: str, percent: float) -> bool:
    bucket = int(hashlib.sha256(f"{node_name}/{model}".encode()).hexdigest()[:8], 16) % 100
    return bucket < percent


def parse_manifest(text: str) -> dict[str, ModelPlan]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"the fleet manifest is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("models"), dict):
        raise ManifestError("the fleet manifest needs a 'models' mapping")
    return {str(name): _plan(str(name), entry) for name, entry in doc["models"].items()}


def _plan(name: str, entry: Any) -> ModelPlan:
    where = f"models.{name}"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping with 'stable'")
    unknown = set(entry) - {"stable", "canary", "min_score", "max_drop", "require_golden",
                            "bake_s", "min_agreement", "min_samples", "shadow", "rollout"}
    if unknown:
        raise ManifestError(f"{where}: unknown keys {sorted(unknown)}")
    stable = _target(entry.get("stable"), f"{where}.stable", canary=False)
    canary = _target(entry["canary"], f"{where}.canary", canary=True) if entry.get(
        "canary") else None
    min_score = _number(entry.get("min_score", 0.0), f"{where}.min_score")
    max_drop = _number(entry.get("max_drop", 1.0), f"{where}.max_drop")
    require_golden = entry.get("require_golden", False)
    if not isinstance(require_golden, bool):
        raise ManifestError(f"{where}.require_golden: must be true or false")
    return ModelPlan(name, stable, canary, min_score, max_drop, require_golden,
                     _bake(entry, where, min_score), max_drop_set="max_drop" in entry)


def _bake(entry: dict[str, Any], where: str, min_score: float) -> BakePolicy:
    bake_s = _seconds(entry.get("bake_s", 0.0), f"{where}.bake_s")
    raw_agreement = entry.get("min_agreement")
    min_agreement = None if raw_agreement is None else _number(
        raw_agreement, f"{where}.min_agreement")
    min_samples = entry.get("min_samples", BakePolicy.min_samples)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ManifestError(f"{where}.min_samples: must be an integer >= 1")
    shadow = entry.get("shadow") or {}
    if not isinstance(shadow, dict) or set(shadow) - {"percent", "max_per_s", "before_swap_s"}:
        raise ManifestError(
            f"{where}.shadow: expected {{percent: ..., max_per_s: ..., before_swap_s: ...}}")
    defaults = ShadowPolicy()
    percent = _number(shadow.get("percent", defaults.percent), f"{where}.shadow.percent",
                      upper=100.0)
    max_per_s = shadow.get("max_per_s", defaults.max_per_s)
    if isinstance(max_per_s, bool) or not isinstance(max_per_s, (int, float)) or max_per_s <= 0:
        raise ManifestError(f"{where}.shadow.max_per_s: must be a number > 0")
    before_swap_s = _seconds(shadow.get("before_swap_s", 0.0), f"{where}.shadow.before_swap_s")
    return BakePolicy(bake_s, min_agreement, min_samples, min_score,
                      ShadowPolicy(percent, float(max_per_s), before_swap_s))


def _seconds(raw: Any, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or raw < 0:
        raise ManifestError(f"{where}: must be a number of seconds >= 0")
    return float(raw)


def _target(raw: Any, where: str, canary: bool) -> Target:
    if not isinstance(raw, dict) or not isinstance(raw.get("source"), str):
        raise ManifestError(f"{where}: expected {{source: ...}}")
    source = raw["source"]
    if not source.startswith(SCHEMES):
        raise ManifestError(f"{where}.source: must start with one of {list(SCHEMES)}")
    percent = _number(raw.get("percent", 100.0 if not canary else None), f"{where}.percent",
                      upper=100.0)
    return Target(source, percent)


def _number(raw: Any, where: str, upper: float = 1.0) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw <= upper:
        raise ManifestError(f"{where}: must be a number in [0, {upper:g}]")
    return float(raw)
