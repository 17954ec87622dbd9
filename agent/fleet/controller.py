"""``edge-agent fleet status|step|run|alive``: read the manifest and the fleet's metrics, decide per
model, write the next manifest (only when something changed: a second pass on the same data
writes nothing). Restart-safe: everything it needs between passes is in the manifest's
``status``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agent.fleet import heartbeat
from agent.fleet.manifest_doc import FleetManifest, iso
from agent.fleet.manifest_store import ConflictError, ManifestStore, open_store
from agent.fleet.policy import Decision, ModelEntry, NodeObs, Status, decide, figures, split
from agent.fleet.prometheus import Prometheus, describe
from inference.errors import EdgeError

log = logging.getLogger("agent.fleet")


@dataclass(frozen=True)
class Outcome:
    model: str
    decision: Decision
    nodes: list[NodeObs]


class Controller:
    def __init__(self, store: ManifestStore, prometheus: Prometheus, min_window_s: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.prometheus = prometheus
        self.min_window_s = min_window_s
        # Wall-clock time, not monotonic: ``status.since`` is read back by another process
        # (a restarted controller), so it must be a date.
        self.clock = clock

    def window(self, entry: ModelEntry, status: Status, now: float) -> float:
        """The current step so far (Prometheus looks back this far), at least ``min_window_s``
        and at most its bake."""
        longest = max(entry.policy.bake_s, self.min_window_s)
        if status.phase != "canary":
            return self.min_window_s
        return min(max(now - status.since, self.min_window_s), longest)

    def decide(self, manifest: FleetManifest, now: float,
               models: list[str] | None = None, observe_all: bool = False) -> list[Outcome]:
        out = []
        for name, entry in manifest.entries.items():
            if models and name not in models:
                continue
            status = manifest.status[name]
            nodes: list[NodeObs] = []
            if entry.canary is not None or observe_all:
                nodes = self.prometheus.observe(name, self.window(entry, status, now), now)
            out.append(Outcome(name, decide(entry, status, nodes, now), nodes))
        return out

    def step(self, dry_run: bool = False, models: list[str] | None = None,
             write: Callable[[str], None] = print) -> list[Outcome]:
        """One pass. A write that loses a race (someone wrote in between) is decided again on
        the new manifest, once."""
        for attempt in (1, 2):
            current = self.store.read()
            manifest = FleetManifest(current.text)
            before = manifest.copy().doc
            now = self.clock()
            outcomes = self.decide(manifest, now, models)
            for o in outcomes:
                manifest.apply(o.model, o.decision, now)
            if manifest.doc == before:
                return outcomes
            text = manifest.render()
            if dry_run:
                write(self.store.preview(text, current))
                return outcomes
            try:
                self.store.write(text, current.version)
            except ConflictError:
                if attempt == 2:
                    raise
                log.warning("the fleet manifest changed while deciding: deciding again")
                continue
            return outcomes
        raise AssertionError("unreachable")

    def status(self, models: list[str] | None = None) -> dict[str, Any]:
        manifest = FleetManifest(self.store.read().text)
        now = self.clock()
        report: dict[str, Any] = {}
        for o in self.decide(manifest, now, models, observe_all=True):
            entry, status = manifest.entries[o.model], manifest.status[o.model]
            cohorts = split(o.model, entry.percent, o.nodes, status.since)
            report[o.model] = {
                "stable": entry.stable,
                "canary": entry.canary,
                "percent": entry.percent,
                "status": {**asdict(status), "since": iso(status.since) if status.since else ""},
                "versions": describe(o.nodes),
                "canary_nodes": _cohort(cohorts.canary),
                "stable_nodes": _cohort(cohorts.stable),
                "lagging": [n.node for n in cohorts.lagging],
                "down": [n.node for n in o.nodes if not n.up],
                "next": {"action": o.decision.action, "reason": o.decision.reason,
                         "percent": o.decision.percent},
            }
        return report


def _cohort(nodes: list[NodeObs]) -> dict[str, Any]:
    agreement = [n.agreement for n in nodes if n.agreement is not None]
    return {"nodes": sorted(n.node for n in nodes),
            "ready": sum(1 for n in nodes if n.ready),
            **figures(nodes),
            **({"agreement": min(agreement)} if agreement else {})}


def render_status(report: dict[str, Any]) -> str:
    lines = []
    for model, r in report.items():
        st = r["status"]
        lines.append(f"{model}: {st['phase']}" + (f" since {st['since']}" if st["since"] else "")
                     + (f" ({st['reason']})" if st["reason"] else ""))
        lines.append(f"  stable  {r['stable']}")
        if r["canary"]:
            lines.append(f"  canary  {r['canary']} at {r['percent']:g}%")
        for version, nodes in r["versions"].items():
            lines.append(f"  version {version}: {len(nodes)} node(s): {', '.join(nodes)}")
        for label in ("canary_nodes", "stable_nodes"):
            c = r[label]
            if not c["nodes"]:
                continue
            figs = ", ".join(
                f"{k} {c[k]:.4g}" for k in ("score", "agreement", "p99", "error_rate") if k in c)
            lines.append(f"  {label.replace('_', ' ')}: {len(c['nodes'])}, {c['ready']} ready"
                         + (f": {figs}" if figs else ""))
        if r["lagging"]:
            lines.append(f"  lagging {', '.join(r['lagging'])}")
        if r["down"]:
            lines.append(f"  down    {', '.join(r['down'])}")
        nxt = r["next"]
        lines.append(f"  next    {nxt['action']}: {nxt['reason']}")
    return "\n".join(lines)


def add_fleet_commands(sub: Any) -> None:
    fleet = sub.add_parser(
        "fleet", help="roll model versions out to the fleet (run centrally)",
        description="The rollout controller: reads the fleet's metrics from Prometheus and "
        "moves each model's canary through its manifest's rollout steps, promotes it or "
        "rolls it back, writing the manifest where the nodes read it.",
    ).add_subparsers(dest="fleet_command", required=True)
    for name, text in (("status", "per model: versions, nodes, canary against stable, the "
                        "next decision"),
                       ("step", "one pass: step, hold, promote or roll back each canary"),
                       ("run", "step every --interval seconds until stopped")):
        p = fleet.add_parser(name, help=text, description=text)
        p.add_argument("--prometheus", required=True, help="Prometheus URL, e.g. "
                       "http://prometheus:9090")
        p.add_argument("--manifest", required=True, help="PATH, file:///PATH, http(s)://URL or "
                       "configmap://NAMESPACE/NAME[/KEY] (KEY default fleet.yaml)")
        p.add_argument("--model", action="append", default=[], help="only this model "
                       "(repeatable)")
        p.add_argument("--selector", default='job="edge-agent"',
                       help="PromQL label matchers of the fleet's targets "
                       "(default: job=\"edge-agent\")")
        p.add_argument("--node-label", default="node", help="the label naming the node "
                       "(default: node)")
        p.add_argument("--min-window", type=float, default=60.0, metavar="S",
                       help="shortest look-back for rates and scores (default 60 s: at least "
                       "two scrapes)")
        if name == "status":
            p.add_argument("--json", action="store_true", help="one JSON document")
        else:
            p.add_argument("--dry-run", action="store_true",
                           help="print what would be written instead of writing it")
        if name == "run":
            p.add_argument("--interval", type=float, default=60.0, metavar="S",
                           help="seconds between passes (default 60)")
            p.add_argument("--heartbeat", type=Path, metavar="PATH",
                           help="touch PATH after every pass (for `fleet alive`)")
    alive = fleet.add_parser(
        "alive", help="exit 0 if `fleet run --heartbeat` finished a pass recently (a liveness "
        "probe)", description="Exit 0 if the heartbeat file was touched within --max-age "
        "seconds, else 1 with the reason.")
    alive.add_argument("--heartbeat", type=Path, required=True, metavar="PATH")
    alive.add_argument("--max-age", type=float, required=True, metavar="S",
                       help="seconds; allow a few intervals plus a slow pass")


def fleet_main(args: argparse.Namespace) -> int:
    if args.fleet_command == "alive":
        ok, why = heartbeat.check(args.heartbeat, args.max_age)
        print(f"edge-agent fleet: {'alive' if ok else 'not alive'}: {why}",
              file=sys.stdout if ok else sys.stderr)
        return 0 if ok else 1
    try:
        controller = Controller(open_store(args.manifest),
                                Prometheus(args.prometheus, args.selector, args.node_label),
                                args.min_window)
        if args.fleet_command == "status":
            report = controller.status(args.model)
            print(json.dumps(report, indent=2) if args.json else render_status(report))
            return 0
        if args.fleet_command == "step":
            _print(controller.step(args.dry_run, args.model))
            return 0
    except EdgeError as exc:
        print(f"edge-agent: {exc.message}", file=sys.stderr)
        return 1
    return run_loop(controller, args.interval, args.dry_run, args.model, args.heartbeat)


def _print(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        d = o.decision
        pct = f" -> {d.percent:g}%" if d.percent is not None and d.action == "step" else ""
        print(f"{o.model}: {d.action}{pct}: {d.reason}", flush=True)


def run_loop(controller: Controller, interval_s: float, dry_run: bool,
             models: list[str], heartbeat_path: Path | None = None) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        started = time.monotonic()
        try:
            _print(controller.step(dry_run, models))
        except EdgeError as exc:  # Prometheus or the store away: try again next pass
            print(f"edge-agent: {exc.message}", file=sys.stderr, flush=True)
        if heartbeat_path is not None:
            try:
                heartbeat.beat(heartbeat_path)
            except OSError as exc:  # a probe that then fails says so; the loop goes on
                print(f"edge-agent: cannot touch the heartbeat {heartbeat_path}: {exc}",
                      file=sys.stderr, flush=True)
        stop.wait(max(interval_s - (time.monotonic() - started), 0.0))
    return 0
