"""``python -m benchmarks compare``: one tuning change, before and after, in one run.

Each variant is the benchmark's base configuration with a JSON overlay merged into it
(``--variant spin='{"runtime": {"allow_spinning": true}}'``); the base itself is always the first
variant. Every variant runs as its own daemon process, all started up front, and the measuring
is interleaved: single-stream blocks alternate between the daemons, and each step of the
offered-load sweep runs on every daemon in turn before the next step. A daemon waiting for its
turn is idle, so machine noise and drift hit every variant alike, and the printed ratios
(variant / base) are what a tuning note should quote.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import RESULTS, machine, ms, post_once
from benchmarks.overload import overload as overload_one
from benchmarks.saturation import load_step, sustainable
from benchmarks.single import Measure, interleaved_blocks
from tests.support import Daemon


@dataclass
class Variant:
    name: str
    overlay: dict[str, Any]
    tree: Path | None = None  # run this variant's daemon from another checkout
    config: Path = Path()
    daemon: Daemon | None = None
    single: list[float] = field(default_factory=list)
    steps: list[dict[str, float]] = field(default_factory=list)
    peak_rss: int = 0
    overload: dict[str, float] = field(default_factory=dict)


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` on ``base``: dicts merge key by key; anything else replaces. A ``models``
    overlay that is a dict applies to the detector under test, ``m``
    (``{"models": {"batching": ...}}``)."""
    out = dict(base)
    for key, value in overlay.items():
        if key == "models" and isinstance(value, dict) and isinstance(out.get(key), list):
            out[key] = [merge(m, value) if m["name"] == "m" else m for m in out[key]]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_variant(text: str) -> Variant:
    name, sep, overlay = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    try:
        parsed = json.loads(overlay or "{}")
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"variant {name!r}: bad JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"variant {name!r}: the overlay must be a JSON object")
    return Variant(name, parsed)


def base_config(model: Path, threads: int) -> dict[str, Any]:
    """The daemon as `benchmarks run` starts it: the detector under test plus the fusion model."""
    return {
        "models": [{"name": "m", "path": str(model)}, {"name": "fusion", "bundled": "fusion"}],
        "runtime": {"intra_op_threads": threads, "preprocess_threads": threads},
        "validate_golden": False,
    }


def write_configs(variants: list[Variant], model: Path, threads: int, workdir: Path) -> None:
    for v in variants:
        v.config = workdir / f"config-{v.name}.yaml"
        v.config.write_text(json.dumps(merge(base_config(model, threads), v.overlay)))


async def start(variants: list[Variant], workdir: Path) -> None:
    for v in variants:
        v.daemon = Daemon(
            ["--config", str(v.config), "--state-dir", str(workdir / v.name)],
            env={"PYTHONPATH": str(v.tree)} if v.tree else None,
            cwd=v.tree,
        )
        await v.daemon.wait_ready(timeout=300)


def detect_measures(http: aiohttp.ClientSession, variants: list[Variant],
                    data: bytes) -> dict[str, Measure]:
    """One detect request of ``data`` to each started variant's daemon, by variant name."""
    measures: dict[str, Measure] = {}
    for v in variants:
        assert v.daemon is not None
        url = v.daemon.url + "/v1/models/m/detect"
        measures[v.name] = functools.partial(post_once, http, url, data)
    return measures


async def single_stream(variants: list[Variant], data: bytes, rounds: int) -> None:
    async with aiohttp.ClientSession() as http:
        out = await interleaved_blocks(detect_measures(http, variants, data), rounds)
    for v in variants:
        v.single = out[v.name]


async def sweep(variants: list[Variant], data: bytes, rates: list[float], step_s: float) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128)) as http:
        for rate in rates:
            for v in variants:
                assert v.daemon is not None
                row, rss = await load_step(http, v.daemon, data, rate, step_s, rss_every_s=0.25)
                v.peak_rss = max(v.peak_rss, rss)
                v.steps.append(row)
                print(
                    f"  {rate:5.1f}/s {v.name:>12}: {row['achieved']:5.1f}/s p50 {row['p50']:6.0f}"
                    f" p99 {row['p99']:6.0f} ms shed {100 * row['shed']:.0f}%",
                    flush=True,
                )
                await asyncio.sleep(1)  # let the queue drain before the next variant's turn


async def overload(variants: list[Variant], data: bytes, seconds: float) -> None:
    """3x the base variant's saturation rate on each daemon in turn (``overload.overload``)."""
    rate = 3 * sustainable(variants[0].steps)
    for v in variants:
        assert v.daemon is not None
        v.overload = {"rate": rate, **await overload_one(v.daemon, data, rate, seconds, 256)}
        o = v.overload
        print(f"  {v.name:>12}: {o['ok']:.0f} ok, {o['shed']:.0f} shed, accepted p99 "
              f"{o['accepted_p99']:.0f} ms (steady {o['steady_p99']:.0f}), shed p99 "
              f"{o['shed_p99']:.1f} ms", flush=True)
        await asyncio.sleep(2)


def render(variants: list[Variant], args: argparse.Namespace) -> str:
    m = machine()
    base = variants[0]
    lines = [
        f"# Compare, {m['date']}: {', '.join(v.name for v in variants)}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} usable cores, onnxruntime {m['onnxruntime']}, "
        f"Python {m['python']}. Model {Path(args.model).name}, frame {Path(args.frame).name}; "
        f"{args.rounds} interleaved single-stream rounds, {args.step_s:g} s per load step.",
        "",
        "| variant | overlay | code |",
        "|---|---|---|",
    ]
    lines += [
        f"| {v.name} | `{json.dumps(v.overlay)}` | {v.tree or 'this checkout'} |"
        for v in variants
    ]
    lines += [
        "",
        "| variant | single p50 ms | ratio | single p99 ms | saturation frames/s | "
        "ratio | peak RSS MiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        sat = max(s["achieved"] for s in v.steps) if v.steps else float("nan")
        base_sat = max(s["achieved"] for s in base.steps) if base.steps else float("nan")
        lines.append(
            f"| {v.name} | {ms(v.single, 50):.1f} | {ms(v.single, 50) / ms(base.single, 50):.3f}"
            f" | {ms(v.single, 99):.1f} | {sat:.1f} | {sat / base_sat:.3f} | "
            f"{v.peak_rss / 2**20:.0f} |"
        )
    lines += [
        "",
        "| offered/s | "
        + " | ".join(f"{v.name} achieved/s | {v.name} p99 ms" for v in variants)
        + " |",
        "|---" * (1 + 2 * len(variants)) + "|",
    ]
    for i, rate in enumerate(args.rates):
        cells = []
        for v in variants:
            s = v.steps[i]
            cells += [f"{s['achieved']:.1f}", f"{s['p99']:.0f}"]
        lines.append(f"| {rate:g} | " + " | ".join(cells) + " |")
    if base.overload:
        lines += ["", f"At 3x the base's saturation ({base.overload['rate']:.1f} frames/s, "
                  f"{args.overload_s:g} s); p99 ratios are to the variant's single-stream p99; "
                  "steady state leaves out the first second:", "",
                  "| variant | ok | shed | other | accepted p99 ms | ratio | steady p99 ms | "
                  "ratio | shed p99 ms |", "|---|---|---|---|---|---|---|---|---|"]
        for v in variants:
            o, unloaded = v.overload, ms(v.single, 99)
            accepted, steady = o["accepted_p99"], o["steady_p99"]
            lines.append(
                f"| {v.name} | {o['ok']:.0f} | {o['shed']:.0f} | {o['other']:.0f} | "
                f"{accepted:.0f} | {accepted / unloaded:.2f} | {steady:.0f} | "
                f"{steady / unloaded:.2f} | {o['shed_p99']:.1f} |"
            )
    return "\n".join(lines) + "\n"


async def run(variants: list[Variant], data: bytes, args: argparse.Namespace) -> None:
    try:
        print("starting " + ", ".join(v.name for v in variants) + " ...", flush=True)
        await start(variants, args.workdir)
        print("single stream, interleaved ...", flush=True)
        await single_stream(variants, data, args.rounds)
        print("offered-load sweep, interleaved ...", flush=True)
        await sweep(variants, data, args.rates, args.step_s)
        if args.overload_s > 0:
            print("3x overload, interleaved ...", flush=True)
            await overload(variants, data, args.overload_s)
    finally:
        for v in variants:
            if v.daemon is not None:
                v.daemon.stop()


def parse_tree(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    tree = Path(path).resolve()
    if not (tree / "agent" / "__main__.py").is_file():
        raise argparse.ArgumentTypeError(f"{tree} is not an edge-agent checkout (no agent/)")
    return name, tree


def main(args: argparse.Namespace) -> int:
    variants = [Variant("base", {}), *args.variant]
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise SystemExit(f"variant names must differ: {names}")
    for name, tree in args.tree:
        if name not in names:
            raise SystemExit(f"--tree {name}=...: no variant is called {name!r}")
        variants[names.index(name)].tree = tree
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    write_configs(variants, Path(args.model), args.threads, args.workdir)
    asyncio.run(run(variants, Path(args.frame).read_bytes(), args))
    text = render(variants, args)
    RESULTS.mkdir(exist_ok=True)
    m = machine()
    out = RESULTS / f"{m['date']}-{m['host'] or 'host'}-compare-{'-'.join(names[1:])}.md"
    out.write_text(text)
    print(text)
    print(f"written: {out}")
    return 0
