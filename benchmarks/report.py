"""The report of ``benchmarks run``: the figures and their verdicts as markdown, the sweep as
PNG plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import ms


@dataclass
class Target:
    figure: str
    measured: float | None
    target: str
    met: bool | None
    note: str = ""


@dataclass
class Report:
    machine: dict[str, str]
    single: dict[str, list[float]] = field(default_factory=dict)
    floor: dict[str, Any] = field(default_factory=dict)  # benchmarks.bare, per-core sessions
    bare: dict[str, Any] = field(default_factory=dict)  # benchmarks.bare, the daemon's layout
    sweep: list[dict[str, float]] = field(default_factory=list)
    closed_loop: list[dict[str, Any]] = field(default_factory=list)
    bundled_peak_rss: int = 0
    precision: list[str] = field(default_factory=list)  # benchmarks.precision's section
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def render(report: Report, model: Path, frame: Path, rounds: int) -> str:
    m = report.machine
    s = report.single
    lines = [
        f"# Benchmark, {m['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} usable cores, onnxruntime {m['onnxruntime']}, "
        f"Python {m['python']}. Model {model.name}, frame {frame.name} "
        f"({frame.stat().st_size // 1024} KB). {rounds} interleaved rounds.",
        "",
        "| single stream | p50 ms | p95 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for key, label in (("raw", "raw `session.run` (floor)"), ("daemon", "daemon end to end (HTTP)"),
                       ("peer", "Ultralytics imdecode + predict (peer)")):
        if s.get(key):
            lines.append(f"| {label} | {ms(s[key], 50):.1f} | {ms(s[key], 95):.1f} | "
                         f"{ms(s[key], 99):.1f} |")
    lines += ["", *target_table(report.targets)]
    if report.floor:
        lines += ["", f"In-process pipeline floor (decode + letterbox + run, one thread per core, "
                  f"no HTTP): {report.floor['fps']:.1f} frames/s, peak RSS "
                  f"{report.floor['peak_rss'] / 2**20:.0f} MiB with one session per core, "
                  f"{report.bare['fps']:.1f} frames/s and "
                  f"{report.bare['peak_rss'] / 2**20:.0f} MiB with one shared session."]
    if report.closed_loop:
        lines += ["", "Closed-loop cameras (each posts its next frame when the answer arrives):",
                  "", *_closed_loop_table(report.closed_loop)]
    lines += ["", "Open-loop cameras:", "", *_sweep_table(report.sweep)]
    lines += report.precision
    lines += [""] + [f"- {n}" for n in report.notes]
    return "\n".join(lines) + "\n"


def target_table(targets: list[Target]) -> list[str]:
    lines = ["| target | measured | target | met | note |", "|---|---|---|---|---|"]
    for t in targets:
        value = "—" if t.measured is None else f"{t.measured:.2f}"
        met = "—" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.figure} | {value} | {t.target} | {met} | {t.note} |")
    return lines


def _closed_loop_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| cameras | retry on 503 | frames/s | p50 ms | p99 ms | 503s | failed connections |"
             " daemon CPU s | event loop CPU s | peak RSS MiB | thread layout |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        layout = r["layout"] + (" (switched)" if r["switched"] else "")
        lines.append(f"| {r['cameras']} | {r['retry']} | {r['fps']:.1f} | {r['p50']:.0f} | "
                     f"{r['p99']:.0f} | {r['refused']} | {r['errors']} | {r['cpu_s']:.1f} | "
                     f"{r['loop_cpu_s']:.2f} | {r['peak_rss'] / 2**20:.0f} | {layout} |")
    return lines


def _sweep_table(rows: list[dict[str, float]]) -> list[str]:
    lines = ["| cameras | offered fps | achieved fps | p50 ms | p95 ms | p99 ms | shed |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cameras']:.0f} | {r['offered']:.1f} | {r['achieved']:.1f} | "
                     f"{r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | "
                     f"{100 * r['shed']:.0f}% |")
    return lines


def plot(report: Report, stem: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install '.[bench]'): no plots")
        return []
    rows = report.sweep
    offered = [r["offered"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for q in ("p50", "p95", "p99"):
        ax.plot(offered, [r[q] for r in rows], marker="o", label=q)
    ax.set_yscale("log")
    latency = _save(fig, ax, "offered load (frames/s)", "latency of answered frames (ms)",
                    stem.with_name(stem.name + "-latency.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    cams = [r["cameras"] for r in rows]
    ax.plot(cams, [r["achieved"] for r in rows], marker="o", label="answered 200 (open loop)")
    for retry, marker in (("Retry-After", "s"), ("at once", "^")):
        closed = [r for r in report.closed_loop if r["retry"] == retry or r["cameras"] == 1]
        if closed:
            ax.plot([r["cameras"] for r in closed], [r["fps"] for r in closed], marker=marker,
                    label=f"answered 200 (closed loop, retry {retry})")
    ax.plot(cams, offered, linestyle="--", label="offered")
    if report.floor:
        ax.axhline(report.floor["fps"], color="grey", linestyle=":", label="pipeline floor")
    throughput = _save(fig, ax, "cameras", "frames/s",
                       stem.with_name(stem.name + "-throughput.png"))
    return [latency, throughput]


def _save(fig: Any, ax: Any, xlabel: str, ylabel: str, path: Path) -> Path:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
