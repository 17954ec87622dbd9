"""``python -m benchmarks run|latency|gpu|compare|paths|precision`` (see README,
"Performance")."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from benchmarks.common import DEFAULT_FRAME, DEFAULT_MODEL
from benchmarks.compare import parse_tree, parse_variant
from benchmarks.latency import measure, report
from benchmarks.paths import add_arguments as add_paths_arguments
from benchmarks.precision import add_arguments as add_precision_arguments


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    lat = sub.add_parser("latency", help="single-stream 1080p latency vs raw session.run")
    lat.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    lat.add_argument("--frame", type=Path, default=DEFAULT_FRAME)
    lat.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    lat.add_argument("--rounds", type=int, default=60)
    lat.add_argument("--warmup", type=int, default=5)
    lat.add_argument("--providers", default="cpu", help="comma-separated, e.g. cuda,cpu")
    gpu = sub.add_parser("gpu", help="TensorRT vs CUDA vs CPU, fp16, batch 1/4/8, parity and the "
                         "daemon's batching on a GPU node")
    gpu.add_argument("--out", type=Path, help="also write the report to OUT/gpu.md")
    gpu.add_argument("--quick", action="store_true",
                     help="the daemon's batching variants only (assumes CUDA)")
    run = sub.add_parser(
        "run",
        help="the performance targets in README's Performance section, all in one run "
        "(floor, daemon, peer, sweep, overload, swap, cold start, precision paths); writes "
        "benchmarks/results/",
    )
    run.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    run.add_argument("--frame", type=Path, default=DEFAULT_FRAME)
    run.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="ONNX Runtime intra-op threads, for the daemon and the floor alike",
    )
    run.add_argument("--rounds", type=int, default=40, help="interleaved single-stream rounds")
    run.add_argument("--fps", type=float, default=2.0, help="frames/s per simulated camera")
    run.add_argument(
        "--cameras",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2, 4, 6, 8, 10, 12, 16, 24],
        help="the sweep, e.g. 1,2,4,8",
    )
    run.add_argument("--step-s", type=float, default=8.0, help="seconds per sweep step")
    run.add_argument(
        "--peer-python",
        help="the interpreter Ultralytics is installed in "
        "(default: $EDGE_BENCH_PEER_PYTHON, this one, /opt/refvenv/bin/python)",
    )
    run.add_argument("--workdir", type=Path, default=Path("/tmp/edge-agent-bench"))
    run.add_argument("--skip-precision", action="store_true",
                     help="leave out the precision paths end to end (`benchmarks precision`)")
    cmp = sub.add_parser(
        "compare",
        help="tuning variants before/after, interleaved in one run; "
        "writes benchmarks/results/<date>-<host>-compare-<names>.md",
    )
    cmp.add_argument(
        "--variant",
        action="append",
        default=[],
        type=parse_variant,
        metavar="NAME=JSON",
        help="a config overlay on the base, e.g. "
        'spin=\'{"runtime": {"allow_spinning": true}}\'; repeatable',
    )
    cmp.add_argument(
        "--tree",
        action="append",
        default=[],
        type=parse_tree,
        metavar="NAME=PATH",
        help="run variant NAME (or the base) from the checkout at PATH, e.g. a git worktree of "
        "the commit before a code change; repeatable",
    )
    cmp.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    cmp.add_argument("--frame", type=Path, default=DEFAULT_FRAME)
    cmp.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    cmp.add_argument("--rounds", type=int, default=30, help="interleaved single-stream rounds")
    cmp.add_argument(
        "--rates",
        type=lambda v: [float(x) for x in v.split(",")],
        default=[12.0, 18.0, 24.0, 30.0],
        help="offered frames/s, e.g. 12,24",
    )
    cmp.add_argument("--step-s", type=float, default=6.0, help="seconds per load step")
    cmp.add_argument("--overload-s", type=float, default=10.0,
                     help="seconds at 3x the base's saturation per variant; 0: skip")
    cmp.add_argument("--workdir", type=Path, default=Path("/tmp/edge-agent-compare"))
    paths = sub.add_parser(
        "paths",
        help="the CPU execution paths side by side (ORT fp32, OpenVINO fp32/bf16, ORT int8): "
        "raw run, golden-set score, agreement; writes benchmarks/results/<date>-<host>-paths.md",
    )
    add_paths_arguments(paths)
    prec = sub.add_parser(
        "precision",
        help="each precision path (fp32, int8, fp32-openvino, bf16) end to end through the "
        "daemon against fp32: raw run, single-stream p50, saturation, golden score, and the "
        "cached cold start; writes benchmarks/results/<date>-<host>-precision.md",
    )
    add_precision_arguments(prec)
    from benchmarks.fleet_sim import add_parser as add_fleet_sim

    add_fleet_sim(sub)
    args = ap.parse_args()
    if args.cmd == "precision":
        from benchmarks.precision import main as precision_main

        return precision_main(args)
    if args.cmd == "paths":
        from benchmarks.paths import main as paths_main

        return paths_main(args)
    if args.cmd == "fleet-sim":
        from benchmarks.fleet_sim import main as fleet_sim_main

        return fleet_sim_main(args)
    if args.cmd == "compare":
        from benchmarks.compare import main as compare_main

        return compare_main(args)
    if args.cmd == "run":
        from benchmarks.run import main as run_main

        return run_main(args)
    if args.cmd == "gpu":
        from benchmarks.gpu_check import main as gpu_main

        return gpu_main(args.out, args.quick)
    data = args.frame.read_bytes()
    result = asyncio.run(
        measure(data, args.model, args.threads, args.rounds, args.warmup, args.providers.split(","))
    )
    report(result, args.model, args.frame, len(data), args.threads, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
