"""The report of ``benchmarks precision``: each path's figures and their ratios to the model's
fp32, which path the issue's targets are held against, and their verdicts."""

from __future__ import annotations

from dataclasses import dataclass, field

from benchmarks.common import ms
from benchmarks.report import Target

FP32 = "fp32"
PEER = "ultralytics openvino (peer)"
E2E_TARGET, SATURATION_TARGET, MAX_DROP = 2.0, 2.0, 0.01


@dataclass
class PathRow:
    model: str
    precision: str
    serving: str = ""  # what the daemon's /v1/models says it serves
    run_ms: float | None = None
    e2e: list[float] = field(default_factory=list)  # seconds per request
    fps: float | None = None
    score: float | None = None
    metric: str = ""
    agreement: float | None = None
    note: str = ""
    expect: str = ""  # what the daemon should say it serves; empty: ``precision`` itself

    def served_as_meant(self) -> bool:
        return self.serving == (self.expect or self.precision)


@dataclass
class ColdStart:
    seconds: list[float]
    serving: str  # what the node chose, measuring every path at the first start
    measured: str  # "cached" on the later starts
    reason: str = ""


@dataclass
class PrecisionResult:
    rows: list[PathRow] = field(default_factory=list)
    cold: ColdStart | None = None
    golden: set[str] = field(default_factory=set)  # models with a golden set
    notes: list[str] = field(default_factory=list)


def speedup(base: float | None, value: float | None) -> float | None:
    """``base / value`` (a time: above 1 is faster than fp32); None where either is missing."""
    return base / value if base and value else None


def ratios(rows: list[PathRow]) -> dict[tuple[str, str], dict[str, float | None]]:
    """Per (model, path): run and e2e p50 speed-ups, saturation ratio, score change, each
    against the model's fp32 row."""
    base = {r.model: r for r in rows if r.precision == FP32}
    out: dict[tuple[str, str], dict[str, float | None]] = {}
    for r in rows:
        b = base.get(r.model)
        e2e = ms(r.e2e, 50) if r.e2e else None
        out[(r.model, r.precision)] = {
            "run": speedup(b.run_ms, r.run_ms) if b else None,
            "e2e": speedup(ms(b.e2e, 50), e2e) if b and b.e2e else None,
            "fps": speedup(r.fps, b.fps) if b and b.fps else None,
            "drop": b.score - r.score if b and b.score is not None and r.score is not None
            else None,
        }
    return out


def best_path(rows: list[PathRow], model: str, golden: bool) -> PathRow | None:
    """The path the targets are held against: as the node's gate picks, the fastest raw run
    among the lower-precision paths the daemon really served, and (with a golden set) within
    ``MAX_DROP`` of fp32's score."""
    r = ratios(rows)
    ok = [row for row in rows if row.model == model and row.precision not in (FP32, PEER)
          and row.served_as_meant() and row.run_ms is not None
          and (not golden or ((d := r[(model, row.precision)]["drop"]) is not None
                              and d <= MAX_DROP + 1e-9))]
    return min(ok, key=lambda row: row.run_ms or 0.0, default=None)


def targets(result: PrecisionResult) -> list[Target]:
    out: list[Target] = []
    r = ratios(result.rows)
    for model in dict.fromkeys(row.model for row in result.rows):
        golden = model in result.golden
        best = best_path(result.rows, model, golden)
        name = best.precision if best else "none"
        e2e = r[(model, name)]["e2e"] if best else None
        fps = r[(model, name)]["fps"] if best else None
        why = "" if best else "no lower-precision path served" + (" within the drop" if golden
                                                                   else "")
        out += [
            Target(f"{model}: e2e single-stream p50, fp32 / {name} (x)", e2e, ">= 2",
                   None if e2e is None else e2e >= E2E_TARGET, why),
            Target(f"{model}: saturation frames/s, {name} / fp32 (x)", fps, ">= 2",
                   None if fps is None else fps >= SATURATION_TARGET, why),
        ]
        if golden:
            drop = r[(model, name)]["drop"] if best else None
            out.append(Target(f"{model}: golden-set mAP50 drop, {name}", drop, "<= 0.01",
                              None if drop is None else drop <= MAX_DROP, why))
        else:
            fp32 = next((row for row in result.rows if row.model == model
                         and row.precision == FP32), None)
            if fp32 is not None:
                out.append(Target(f"{model}: no golden set, precision auto with "
                                  "runtime.openvino: serves fp32", None, "fp32",
                                  fp32.serving == FP32, f"serves {fp32.serving or '?'}"))
    if result.cold is not None:
        c = result.cold
        median = sorted(c.seconds)[len(c.seconds) // 2]
        out.append(Target("cold start, precision choice cached (defects, auto, "
                          "runtime.openvino) (s, median of 3)", median, "<= 1.0",
                          median <= 1.0 and c.measured == "cached",
                          ", ".join(f"{s:.2f}" for s in c.seconds)
                          + f"; serves {c.serving}, choice {c.measured or 'not reused'}"))
    return out


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def render_table(result: PrecisionResult) -> list[str]:
    lines = [
        "| model | path | daemon serves | raw run ms | x | e2e p50 ms | x | e2e p99 ms | "
        "saturation frames/s | x | golden score | Δ score | agreement with fp32 | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    r = ratios(result.rows)
    for row in result.rows:
        x = r[(row.model, row.precision)]
        drop = x["drop"]
        lines.append(
            f"| {row.model} | {row.precision} | {row.serving or '—'} | "
            f"{_fmt(row.run_ms, '.1f')} | {_fmt(x['run'], '.2f', 'x')} | "
            f"{_fmt(ms(row.e2e, 50) if row.e2e else None, '.1f')} | "
            f"{_fmt(x['e2e'], '.2f', 'x')} | {_fmt(ms(row.e2e, 99) if row.e2e else None, '.1f')}"
            f" | {_fmt(row.fps, '.1f')} | {_fmt(x['fps'], '.2f', 'x')} | "
            f"{_fmt(row.score, '.4f')} | {_fmt(None if drop is None else -drop or 0.0, '+.4f')} | "
            f"{_fmt(row.agreement, '.3f')} | {row.note} |")
    return lines


def render_section(result: PrecisionResult, cameras: int, step_s: float,
                   settle_s: float) -> list[str]:
    lines = ["", "Precision paths end to end (one daemon per path, measured interleaved; x: "
             "against the model's fp32, above 1 is better; saturation: "
             f"{cameras} closed-loop cameras for {step_s:g} s after {settle_s:g} s settling, "
             "in which the thread layout turns narrow):", "",
             *render_table(result)]
    if result.cold is not None:
        lines += ["", f"The node's own choice for defects (auto, runtime.openvino, all paths "
                  f"measured at the first start): {result.cold.serving}: {result.cold.reason}"]
    return lines + [""] + [f"- {n}" for n in result.notes]
