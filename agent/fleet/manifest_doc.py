"""The fleet manifest as the controller edits it: read the entries and ``status``, apply a
decision, render the next text. Pure (no I/O); ``now`` is passed in.

The controller rewrites the YAML it read: keys keep their order, comments are not kept.
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

import yaml

from agent.fleet.policy import MAX_REJECTED, PHASES, Decision, ModelEntry, Status, parse_entry
from agent.models.manifest import ManifestError, parse_manifest


class FleetManifest:
    def __init__(self, text: str) -> None:
        parse_manifest(text)  # what a node would refuse, the controller refuses too
        doc = yaml.safe_load(text)
        self.doc: dict[str, Any] = doc
        self.entries = {str(name): parse_entry(str(name), entry)
                        for name, entry in doc["models"].items()}
        raw = doc.get("status") or {}
        if not isinstance(raw, dict):
            raise ManifestError("status: expected a mapping of model names")
        self.status = {name: parse_status(raw.get(name), f"status.{name}")
                       for name in self.entries}

    def apply(self, model: str, decision: Decision, now: float) -> None:
        """The manifest after ``decision``; a hold changes nothing."""
        entry = self.entries[model]
        models = self.doc["models"]
        status = self.status[model]
        if decision.action == "hold":
            if entry.canary is None and status.phase == "canary":
                # The canary was taken out by hand: the rollout is over.
                self._set(model, Status("stable", status.source, 0.0, now,
                                        "the canary was removed from the manifest by hand",
                                        {}, status.rejected))
            return
        if decision.action == "step":
            assert entry.canary is not None
            assert decision.percent is not None
            models[model]["canary"] = {**models[model]["canary"],
                                       "percent": number(decision.percent)}
            self._set(model, Status("canary", entry.canary, decision.percent, now,
                                    decision.reason, decision.baseline, status.rejected))
        elif decision.action == "promote":
            assert entry.canary is not None
            models[model]["stable"] = {"source": entry.canary}
            del models[model]["canary"]
            self._set(model, Status("stable", entry.canary, 100.0, now, decision.reason, {},
                                    status.rejected))
        elif decision.action == "rollback":
            assert entry.canary is not None
            del models[model]["canary"]
            rejected = list(status.rejected)
            if status.rejection(entry.canary) is None:
                rejected.append({"source": entry.canary, "reason": decision.reason,
                                 "at": iso(now)})
            self._set(model, Status("rolled_back", entry.canary, 0.0, now, decision.reason, {},
                                    rejected[-MAX_REJECTED:]))

    def _set(self, model: str, status: Status) -> None:
        self.status[model] = status
        self.doc.setdefault("status", {})
        if not isinstance(self.doc["status"], dict):
            self.doc["status"] = {}
        self.doc["status"][model] = status_doc(status)

    def render(self) -> str:
        return yaml.safe_dump(self.doc, sort_keys=False, default_flow_style=False)

    def copy(self) -> FleetManifest:
        other = copy.copy(self)
        other.doc = copy.deepcopy(self.doc)
        other.status = copy.deepcopy(self.status)
        return other


def number(value: float) -> float | int:
    """5.0 -> 5: what a person would write."""
    return int(value) if float(value).is_integer() else value


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(raw: Any, where: str) -> float:
    if isinstance(raw, datetime):  # YAML reads an unquoted timestamp as a datetime
        stamp = raw if raw.tzinfo else raw.replace(tzinfo=timezone.utc)
        return stamp.timestamp()
    if not isinstance(raw, str):
        raise ManifestError(f"{where}: expected a UTC time like 2026-12-01T10:00:00Z")
    try:
        stamp = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ManifestError(f"{where}: expected a UTC time like 2026-12-01T10:00:00Z") from exc
    return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()


def parse_status(raw: Any, where: str) -> Status:
    if raw is None:
        return Status()
    if not isinstance(raw, dict):
        raise ManifestError(f"{where}: expected a mapping")
    phase = raw.get("phase", "stable")
    if phase not in PHASES:
        raise ManifestError(f"{where}.phase: one of {list(PHASES)}")
    percent = raw.get("percent", 0)
    if isinstance(percent, bool) or not isinstance(percent, (int, float)):
        raise ManifestError(f"{where}.percent: must be a number")
    rejected = raw.get("rejected") or []
    if not isinstance(rejected, list) or not all(isinstance(r, dict) for r in rejected):
        raise ManifestError(f"{where}.rejected: expected a list of {{source, reason, at}}")
    baseline = raw.get("baseline") or {}
    if not isinstance(baseline, dict) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in baseline.values()):
        raise ManifestError(f"{where}.baseline: expected numbers")
    since = parse_time(raw["since"], f"{where}.since") if "since" in raw else 0.0
    return Status(phase, str(raw.get("source", "")), float(percent), since,
                  str(raw.get("reason", "")), {str(k): float(v) for k, v in baseline.items()},
                  rejected)


def status_doc(status: Status) -> dict[str, Any]:
    out: dict[str, Any] = {"phase": status.phase, "source": status.source,
                           "percent": number(status.percent), "since": iso(status.since),
                           "reason": status.reason}
    if status.baseline:
        out["baseline"] = {k: round(v, 6) for k, v in status.baseline.items()}
    if status.rejected:
        out["rejected"] = status.rejected
    return out


__all__ = ["FleetManifest", "ModelEntry", "iso", "parse_status", "status_doc"]
