"""The fleet simulation's report (markdown) and its plot of nodes per version over time."""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks.common import machine

if TYPE_CHECKING:
    from benchmarks.fleet_sim import SimResult

VERSIONS = ("1.0.0", "1.1.0", "1.2.0")


def nodes_per_version(result: SimResult, t: float) -> Counter[str]:
    state: dict[str, str] = {}
    for when, node, version, _ in sorted(result.changes):
        if when <= t:
            state[node] = version
    return Counter(state.values())


def first_seen(result: SimResult) -> float:
    """When the first poll had seen every node (the timeline starts there)."""
    first: dict[str, float] = {}
    for t, node, *_ in sorted(result.changes):
        first.setdefault(node, t)
    return max(first.values(), default=0.0)


def write_report(result: SimResult, final: str, status: str, recorded: list[dict[str, Any]],
                 results: Path) -> tuple[Path, Path | None]:
    from benchmarks.fleet_sim import BAKE_S, MODEL

    info = machine()
    nodes = result.nodes
    stem = f"{date.today().isoformat()}-fleet-sim-{len(nodes)}-agents"
    results.mkdir(parents=True, exist_ok=True)
    plot = _plot(result, results / f"{stem}.png")
    cut = (f"`{result.stopped_node}`'s process was stopped (SIGSTOP) from the 5 % step to a few "
           "seconds into the 25 % step, then continued (SIGCONT)")
    if result.uplink_node:
        cut += (f"; `{result.uplink_node}` ran in its own network namespace and its uplink (the "
                "manifest over HTTP, the registry) was unplugged (`ip link set up0 down`) from "
                "the 5 % step to the 100 % step, while its LAN (its cameras, the site's "
                "Prometheus) stayed up")
    failed = result.failed_requests()
    answers: Counter[str] = Counter()
    for per_node in result.camera_answers.values():
        answers.update(per_node)
    kinds: list[tuple[float, str]] = []
    last = ("", 0)
    for t, run, line in result.decisions:  # holds only when their kind changes
        kind = line.split(":", 2)[1].strip() if line.count(":") >= 2 else line
        if kind != "hold" or last != ("hold", run):
            kinds.append((t, f"`{line}`" + (" (restarted controller)" if run == 2 else "")))
        last = (kind, run)
    lines = [
        f"# Fleet rollout simulation, {date.today().isoformat()}",
        "",
        f"`python -m benchmarks fleet-sim --agents {len(nodes)}` on {info['host']} "
        f"({info['cores']} cores, {info['cpu']}). {len(nodes)} agents on loopback (nodes "
        f"{nodes[0]} .. {nodes[-1]}, own state dirs), a real Prometheus (file SD, 1 s scrape, "
        "the fleet rules), a real OCI registry (1.0.0, 1.1.0, broken 1.2.0 pushed with ORAS), "
        f"cameras (2 requests/s each) on {len(result.cameras_on)} nodes "
        f"({', '.join(result.cameras_on)}), `/health` polled on every node every 0.5 s, "
        f"`edge-agent fleet run --interval 2`. Policy: steps 5/25/100 %, rollout bake {BAKE_S} "
        "s, min_nodes 1, min_score 0.9, max_drop 0.02, min_agreement 0.9 (nodes bake 120 s "
        "with a 50 % shadow). Times are seconds since every agent was ready; the controller's "
        "holds are shown when their kind changes.",
        "",
        f"Cut off during the 1.1.0 rollout: {cut}. The controller was killed (SIGKILL) during "
        "the 25 % bake and started again 4 s later.",
        "",
        f"Cohorts by the nodes' hash: 5 %: {result.cohorts[5]}; 25 %: {result.cohorts[25]}.",
        "",
        "## Figures",
        "",
        f"- 1.1.0: steps {[f'{p:g}%' for p in result.steps('1.1.0')]}, then "
        f"`{result.outcome('1.1.0')}`.",
        f"- 1.2.0: steps {[f'{p:g}%' for p in result.steps('1.2.0')]}, then "
        f"`{result.outcome('1.2.0')}`; at most {result.most_nodes_on('1.2.0')} node(s) "
        "served it at once.",
        f"- Camera requests: {sum(answers.values())}, failed (not 200): {failed} "
        f"({dict(answers)}). While `{result.stopped_node}` was stopped its camera requests "
        f"and probes were not sent ({result.skipped_while_stopped}); a 1 s /health probe then "
        f"got {'an answer' if result.answered_while_stopped else 'no answer'}.",
        f"- `/health` checks: {result.health_checks}, not 200: {len(result.health_bad)}"
        + (f" ({result.health_bad[:5]})" if result.health_bad else "") + ".",
        *[f"- {node} came back at t={back:.1f} s and served 1.1.0 "
          + (f"{c:.1f} s later" if (c := result.caught_up(node, '1.1.0')) is not None
             else "never") + "."
          for node, back in result.returned.items()],
        *([f"- The unplugged node's `edge_control_plane_connected` in Prometheus just before "
           f"its uplink came back: {result.connected_while_cut}."] if result.uplink_node else []),
        f"- Controller restart: status at the kill `{_brief(result.restart.get('at_kill'))}`; "
        f"after `{_brief(result.restart.get('after'))}`; its first line: "
        f"`{result.restart.get('first_line', '')}`.",
        f"- Total: {result.end_s:.0f} s from every agent ready to the end.",
        "",
        "## Controller decisions and the simulation's actions",
        "",
        *[f"- t={t:6.1f} s: {line}" for t, line in sorted(
            [(t, f"(the release pipeline names {v} as the canary, at 5 %)")
             for v, t in result.released.items()]
            + [(t, f"**{what}**") for t, what in result.events] + kinds)],
        "",
        "## Versions per node (each change, as `/v1/models` showed it)",
        "",
        "| node | timeline |",
        "|---|---|",
    ]
    for node in nodes:
        steps = [f"{t:.0f} s {v} ({r})" for t, n, v, r in result.changes if n == node]
        lines.append(f"| {node} | {' -> '.join(steps)} |")
    lines += ["", "## Nodes per version over time (10 s buckets)", "",
              (f"![nodes per version]({plot.name})" if plot is not None else
               "(no plot: matplotlib is not installed; `pip install '.[bench]'`)"), "",
              "| t (s) | " + " | ".join(VERSIONS) + " |", "|---|---|---|---|"]
    start = first_seen(result)
    t = 0.0
    while t <= result.end_s:
        counts = nodes_per_version(result, max(t, start))
        lines.append(f"| {t:.0f} | " + " | ".join(str(counts.get(v, 0)) for v in VERSIONS)
                     + " |")
        t += 10
    lines += ["", "Prometheus' `model_rollout_version:edge_model_info:count` at the end: " +
              ", ".join(f"{r['metric'].get('rollout')} {r['metric'].get('version')}: "
                        f"{r['value'][1]}" for r in recorded) + ".",
              "", f"## `edge-agent fleet status` at the end ({MODEL})", "", "```",
              status.rstrip(), "```", "", "## The manifest at the end", "", "```yaml",
              final.rstrip(), "```", ""]
    out = results / f"{stem}.md"
    out.write_text("\n".join(lines))
    return out, plot


def _brief(status: Any) -> str:
    if not isinstance(status, dict):
        return "-"
    return ", ".join(f"{k}: {status[k]}" for k in ("phase", "percent", "since") if k in status)


def _plot(result: SimResult, out: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no plot, the text "
              "timeline only")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = first_seen(result)
    times = sorted({start, result.end_s, *(t for t, *_ in result.changes if t > start)})
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for version in VERSIONS:
        ax.step(times, [nodes_per_version(result, t).get(version, 0) for t in times],
                where="post", label=version)
    for version, t in result.released.items():
        ax.axvline(t, color="grey", linestyle=":")
        ax.annotate(f"{version} named", (t, len(result.nodes) + 0.5), fontsize=7)
    for i, (t, what) in enumerate(result.events):
        ax.axvline(t, color="red", linestyle="--", linewidth=0.7)
        # Events at the same moment: their labels on either side of the line.
        ax.annotate(what.split(" (")[0], (t, 3), xytext=(-8 if i % 2 else 2, 0),
                    textcoords="offset points", fontsize=6, rotation=90, color="red")
    ax.set_xlabel("seconds since every agent was ready")
    ax.set_ylabel("nodes serving")
    ax.set_ylim(0, len(result.nodes) + 2)
    ax.set_title(f"{len(result.nodes)} agents: nodes per version (fleet-sim)")
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
