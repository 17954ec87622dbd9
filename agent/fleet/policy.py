"""The rollout decision, pure: a model's manifest entry, its status and what each node reports
-> step, hold, promote or roll back, with the reason. No I/O, no clock (``now`` is passed in).

A rollout starts when the manifest names a canary the status does not know; the canary then
moves through ``rollout.steps`` (percent of the fleet, the nodes' own cohort hash), holding at
each until it has baked ``bake_s`` and at least ``min_nodes`` canary nodes report healthy, and
is promoted (``stable`` := canary) after the last step (100). Any signal of a bad canary rolls
it back at once, whatever the step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.models.manifest import ManifestError, in_canary

Action = Literal["step", "hold", "promote", "rollback"]
PHASES = ("stable", "canary", "rolled_back")
# Error rates are compared as a ratio; a stable cohort with no error at all would make any
# canary error an infinite ratio, so the stable rate counts as at least this (0.1 %).
ERROR_RATE_FLOOR = 0.001
# Fewer answered requests than this in a cohort over the window: its error rate is not judged.
MIN_REQUESTS = 20
MAX_REJECTED = 20  # rejected sources kept per model in the status (the oldest go first)
ROLLOUT_KEYS = {"steps", "bake_s", "min_nodes", "max_error_ratio", "max_p99_ratio"}


@dataclass(frozen=True)
class RolloutPolicy:
    steps: tuple[float, ...] = (5.0, 25.0, 100.0)
    bake_s: float = 1800.0
    min_nodes: int = 3
    max_error_ratio: float = 1.5
    max_p99_ratio: float = 1.5

    def next_step(self, percent: float) -> float | None:
        return next((s for s in self.steps if s > percent), None)


@dataclass(frozen=True)
class Gates:
    """The model's accuracy gates (absent in the manifest: None, not checked)."""

    min_score: float | None = None
    max_drop: float | None = None
    min_agreement: float | None = None


@dataclass(frozen=True)
class ModelEntry:
    """What the controller reads of one model in the manifest."""

    name: str
    stable: str
    canary: str | None
    percent: float
    gates: Gates
    policy: RolloutPolicy


@dataclass
class Status:
    """One model's entry in the manifest's ``status`` (the controller's only state)."""

    phase: str = "stable"
    source: str = ""  # the canary source this status is about
    percent: float = 0.0
    since: float = 0.0  # Unix time of the last change the controller wrote
    reason: str = ""
    # The stable cohort's figures when the last step was taken: what the canary is compared
    # with once it runs on every node (at 100 % there are no stable nodes left).
    baseline: dict[str, float] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)  # {source, reason, at}

    def rejection(self, source: str) -> dict[str, Any] | None:
        return next((r for r in self.rejected if r.get("source") == source), None)


@dataclass(frozen=True)
class NodeObs:
    """What Prometheus says of one node for one model over the current step's window."""

    node: str
    up: bool  # scraped at the last scrape
    up_in_window: bool  # scraped at some time in the window
    ready: bool | None  # edge_ready (None: not reported)
    connected: bool | None  # edge_control_plane_connected (None: no manifest sync yet)
    last_sync: float | None  # when its last complete manifest sync ended (Unix time)
    canary: bool | None  # edge_model_canary: the cohort the node itself computed (None: none)
    version: str = ""
    score: float | None = None  # lowest golden-set score of its current version in the window
    agreement: float | None = None  # the shadow's last agreement in the window
    p99: float | None = None  # mean of its p99 over the window
    requests: float = 0.0  # answered in the window
    errors: float = 0.0  # of which 5xx other than queue-full refusals (the load shed)


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    percent: float | None = None  # the canary's percent after the action (None: no canary)
    baseline: dict[str, float] = field(default_factory=dict)  # stable figures, on a step


@dataclass(frozen=True)
class Cohorts:
    canary: list[NodeObs]  # report edge_model_canary == 1
    stable: list[NodeObs]  # report edge_model_canary == 0 (or no fleet manifest)
    lagging: list[NodeObs]  # in the cohort by the hash, synced since the step, not on the canary
    down: list[NodeObs]  # in the cohort by the hash, not scraped now


def parse_entry(name: str, entry: Any) -> ModelEntry:
    """The controller's reading of ``models.<name>``; the node checks the rest."""
    where = f"models.{name}"
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a mapping with 'stable'")
    stable = _source(entry.get("stable"), f"{where}.stable")
    canary_raw = entry.get("canary")
    canary = _source(canary_raw, f"{where}.canary") if canary_raw else None
    percent = 0.0
    if canary_raw:
        percent = _num(canary_raw.get("percent", 0), f"{where}.canary.percent", 0, 100)
    gates = Gates(*(None if entry.get(k) is None else _num(entry[k], f"{where}.{k}", 0, 1)
                    for k in ("min_score", "max_drop", "min_agreement")))
    return ModelEntry(name, stable, canary, percent, gates,
                      parse_rollout(entry.get("rollout"), f"{where}.rollout"))


def parse_rollout(raw: Any, where: str) -> RolloutPolicy:
    if raw is None:
        return RolloutPolicy()
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a mapping of {sorted(ROLLOUT_KEYS)}")
    unknown = set(raw) - ROLLOUT_KEYS
    if unknown:
        raise ManifestError(f"{where}: unknown keys {sorted(unknown)}")
    default = RolloutPolicy()
    steps_raw = raw.get("steps", list(default.steps))
    if not isinstance(steps_raw, list) or not steps_raw:
        raise ManifestError(f"{where}.steps: expected a list of percentages ending in 100")
    steps = tuple(_num(s, f"{where}.steps", 0, 100) for s in steps_raw)
    if any(b <= a for a, b in itertools.pairwise(steps)) or steps[0] <= 0 or steps[-1] != 100:
        raise ManifestError(f"{where}.steps: must increase, above 0, and end in 100")
    min_nodes = raw.get("min_nodes", default.min_nodes)
    if isinstance(min_nodes, bool) or not isinstance(min_nodes, int) or min_nodes < 1:
        raise ManifestError(f"{where}.min_nodes: must be an integer >= 1")
    return RolloutPolicy(
        steps,
        _num(raw.get("bake_s", default.bake_s), f"{where}.bake_s", 0, math.inf),
        min_nodes,
        _num(raw.get("max_error_ratio", default.max_error_ratio), f"{where}.max_error_ratio",
             1, math.inf),
        _num(raw.get("max_p99_ratio", default.max_p99_ratio), f"{where}.max_p99_ratio",
             1, math.inf),
    )


def _source(raw: Any, where: str) -> str:
    if not isinstance(raw, dict) or not isinstance(raw.get("source"), str):
        raise ManifestError(f"{where}: expected {{source: ...}}")
    return str(raw["source"])


def _num(raw: Any, where: str, low: float, high: float) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not low <= raw <= high:
        raise ManifestError(f"{where}: must be a number in [{low:g}, {high:g}]")
    return float(raw)


def split(model: str, percent: float, nodes: Sequence[NodeObs], since: float = 0.0) -> Cohorts:
    canary = [n for n in nodes if n.up and n.canary]
    stable = [n for n in nodes if n.up and not n.canary]
    expected = [n for n in nodes if in_canary(n.node, model, percent)]
    # A node of the cohort that completed a sync since the step (it reached the manifest and
    # the sources) but serves another version refused the canary at its gate or rolled it
    # back in its bake. One that has not synced since is only late: it does not count.
    lagging = [n for n in expected if n.up and not n.canary and n.connected
               and n.last_sync is not None and n.last_sync > since]
    down = [n for n in expected if not n.up]
    return Cohorts(canary, stable, lagging, down)


def healthy(node: NodeObs, gates: Gates) -> bool:
    """A report that counts towards ``min_nodes``: scraped, ready, and every configured gate's
    signal present (a node that does not report does not count)."""
    if not (node.up and node.ready):
        return False
    if (gates.min_score is not None or gates.max_drop is not None) and node.score is None:
        return False
    return gates.min_agreement is None or node.agreement is not None


def _mean(values: Sequence[float | None]) -> float | None:
    got = [v for v in values if v is not None and not math.isnan(v)]
    return sum(got) / len(got) if got else None


def _error_rate(nodes: Sequence[NodeObs]) -> float | None:
    requests = sum(n.requests for n in nodes)
    return sum(n.errors for n in nodes) / requests if requests >= MIN_REQUESTS else None


def figures(nodes: Sequence[NodeObs]) -> dict[str, float]:
    """A cohort's aggregate figures (those it has): score, p99, error_rate."""
    out = {"score": _mean([n.score for n in nodes]), "p99": _mean([n.p99 for n in nodes]),
           "error_rate": _error_rate(nodes)}
    return {k: v for k, v in out.items() if v is not None}


def problems(entry: ModelEntry, cohorts: Cohorts, baseline: dict[str, float],
             baked: bool) -> list[str]:
    """Every sign of a bad canary (empty: none). ``baseline``: the stable figures to compare
    with when no stable node reports (at 100 %)."""
    gates, policy = entry.gates, entry.policy
    canary = cohorts.canary
    out: list[str] = []
    for n in canary:
        if gates.min_score is not None and n.score is not None and n.score < gates.min_score:
            out.append(f"{n.node} scores {n.score:.3f}, under min_score {gates.min_score:g}")
        if (gates.min_agreement is not None and n.agreement is not None
                and n.agreement < gates.min_agreement):
            out.append(f"{n.node}: shadow agreement {n.agreement:.3f}, under min_agreement "
                       f"{gates.min_agreement:g}")
        if n.ready is False:
            out.append(f"{n.node} is not ready")
    for n in cohorts.down:
        if n.up_in_window:
            out.append(f"{n.node} (canary cohort) went down during the step")
    stable = {**baseline, **figures(cohorts.stable)}
    mine = figures(canary)
    if gates.max_drop is not None and "score" in mine and "score" in stable:
        drop = stable["score"] - mine["score"]
        if drop > gates.max_drop:
            out.append(f"canary score {mine['score']:.3f} is {drop:.3f} under stable "
                       f"{stable['score']:.3f} (max_drop {gates.max_drop:g})")
    if "error_rate" in mine and "error_rate" in stable:
        allowed = policy.max_error_ratio * max(stable["error_rate"], ERROR_RATE_FLOOR)
        if mine["error_rate"] > allowed:
            out.append(f"canary error rate {mine['error_rate']:.2%} against stable "
                       f"{stable['error_rate']:.2%} (max_error_ratio {policy.max_error_ratio:g})")
    if "p99" in mine and "p99" in stable and stable["p99"] > 0:
        ratio = mine["p99"] / stable["p99"]
        if ratio > policy.max_p99_ratio:
            out.append(f"canary p99 {mine['p99'] * 1000:.1f} ms is {ratio:.2f}x stable "
                       f"{stable['p99'] * 1000:.1f} ms (max_p99_ratio {policy.max_p99_ratio:g})")
    if baked:  # before, a sync that read the previous manifest may just have ended
        for n in cohorts.lagging:
            out.append(f"{n.node} is in the {entry.percent:g}% cohort but serves "
                       f"{n.version or 'another version'}: it refused the canary or rolled "
                       f"it back")
    return out


def decide(entry: ModelEntry, status: Status, nodes: Sequence[NodeObs], now: float) -> Decision:
    if entry.canary is None:
        if status.phase == "rolled_back":
            return Decision("hold", f"no canary in the manifest ({status.source} was rolled "
                            f"back: {status.reason})")
        return Decision("hold", "no canary in the manifest")
    bad = status.rejection(entry.canary)
    if bad is not None:
        return Decision("rollback", f"{entry.canary} was rolled back before "
                        f"({bad.get('reason', '')}): it is not rolled out again")
    first = entry.policy.steps[0]
    if status.phase != "canary" or status.source != entry.canary:
        return Decision("step", f"rollout of {entry.canary} starts at {first:g}%", first,
                        figures(split(entry.name, entry.percent, nodes).stable))
    if entry.percent != status.percent:
        return Decision("step", f"the canary percent was changed to {entry.percent:g}% by "
                        f"hand: its bake starts again", entry.percent,
                        figures(split(entry.name, entry.percent, nodes).stable))
    cohorts = split(entry.name, entry.percent, nodes, status.since)
    elapsed = now - status.since
    baked = elapsed >= entry.policy.bake_s
    found = problems(entry, cohorts, status.baseline, baked)
    if found:
        return Decision("rollback", "; ".join(found))
    if not baked:
        return Decision("hold", f"baking at {entry.percent:g}%: {max(elapsed, 0):.0f} s of "
                        f"{entry.policy.bake_s:g} s", entry.percent)
    reports = [n for n in cohorts.canary if healthy(n, entry.gates)]
    need = entry.policy.min_nodes
    if len(reports) < need:
        expected = len(cohorts.canary) + len(cohorts.lagging) + len(cohorts.down)
        return Decision("hold", f"{len(reports)} healthy canary report(s) at "
                        f"{entry.percent:g}% ({expected} node(s) in the cohort), "
                        f"{need} needed (min_nodes)", entry.percent)
    after = entry.policy.next_step(entry.percent)
    summary = _summary(reports, {**status.baseline, **figures(cohorts.stable)})
    if after is None:
        return Decision("promote", f"{entry.canary} healthy on {len(reports)} node(s) at "
                        f"{entry.percent:g}% for {elapsed:.0f} s{summary}", 100.0)
    return Decision("step", f"healthy on {len(reports)} node(s) at {entry.percent:g}% for "
                    f"{elapsed:.0f} s{summary}: next {after:g}%", after,
                    figures(cohorts.stable) or status.baseline)


def _summary(canary: Sequence[NodeObs], theirs: dict[str, float]) -> str:
    mine = figures(canary)
    parts = [f"{k} {mine[k]:.4g} vs {theirs[k]:.4g}" for k in ("score", "p99", "error_rate")
             if k in mine and k in theirs]
    return f" ({', '.join(parts)})" if parts else ""
