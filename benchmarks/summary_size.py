"""The size of ``/metrics/summary``, the body a fleet collector polls from every node.

:func:`worst_case` renders the summary of ``n`` models with everything a node can show at once:
model names and versions of the longest label length, every status code and refusal reason,
accelerator readings from several GPUs, a fleet manifest (canary cohort, control plane, last
sync), a shadow version in every model, and counters and timestamps of years of uptime. The
unit test holds it to 4 KB for two models; ``python -m benchmarks.summary_size`` prints the
bytes for 1..4 models and what the fleet scrape costs per node.
"""

from __future__ import annotations

import argparse

import aiohttp

from agent.http.errors import STATUS
from agent.metrics.accelerators import Reading
from agent.metrics.exposition import (
    MAX_VERSION_LABEL,
    ModelSnapshot,
    ShadowSnapshot,
    Snapshot,
    render_summary,
)
from agent.metrics.recorder import STAGES, Recorder
from agent.precision import precision_paths
from agent.settings import MAX_MODEL_NAME
from benchmarks.report import Target
from tests.support import Daemon

SCRAPE_INTERVAL_S = 60  # k3s/prometheus/scrape-config.yml
LIMIT = 4096


async def summary_bytes(daemon: Daemon) -> int:
    async with aiohttp.ClientSession() as http, http.get(daemon.url + "/metrics/summary") as r:
        return len(await r.read())


def target(size: int) -> Target:
    return Target("/metrics/summary body, two models (KB)", size / 1000, "<= 4", size <= LIMIT)


class _Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def worst_case(n: int) -> bytes:
    """The summary of ``n`` models at their largest (see the module's docstring)."""
    names = [f"m{i}-".ljust(MAX_MODEL_NAME, "x") for i in range(n)]
    clock = _Clock()
    rec = Recorder(names, window_s=60, clock=clock)
    reasons = {reason for _, _, reason in STATUS} | {"internal"}
    codes = {status for _, status, _ in STATUS} | {200, 500}
    for name in names:
        stats = rec.models[name]
        for i in range(500):  # latencies of every magnitude: the longest numbers
            total = 1.2345678e-5 * (1.5 ** (i % 40))
            rec.observe_request(name, 200, {"total": total, **dict.fromkeys(STAGES, total / 4)})
            rec.observe_queue(name, 1000 + i)
        for code in codes:
            stats.codes[str(code)] += 9_876_543_210_987  # a thousand years at 300 a second
        for reason in reasons:
            stats.rejected[reason] += 9_876_543_210_987
    clock.now += 0.123456789
    version = "1.22.333-rc.4444+build.20261201.abcdef"  # longer than the label cap
    assert len(version) > MAX_VERSION_LABEL
    snap = Snapshot(
        ready=True,
        models=[
            ModelSnapshot(
                name, version, "sha256:" + "ab" * 32, "tensorrt", 1000, 0.123456789012,
                rollout="canary",
                shadow=ShadowSnapshot(version + "-previous", 0.987654321012, 12_345_678),
                rollbacks=3,
                precision=max(precision_paths(), key=len),  # the longest the gate can serve
            )
            for name in names
        ],
        # A fake reading (no GPU on the machines that run the tests): four devices' worth.
        accelerators=[
            Reading(str(d), "NVIDIA H100 80GB HBM3", 0.123456789, 12_345_678_901.0,
                    85_899_345_920.0, 63.123456)
            for d in range(4)
        ],
        control_plane=(True, 1_764_612_345.123456),
    )
    return render_summary(rec, snap)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    args = parser.parse_args()
    sizes = {n: len(worst_case(n)) for n in range(1, args.models + 1)}
    for n, size in sizes.items():
        per_minute = size * 60 / SCRAPE_INTERVAL_S
        print(f"{n} model(s): {size} bytes; fleet scrape {per_minute:.0f} bytes per node per "
              f"minute ({per_minute * 60 * 24 / 1e6:.2f} MB per node per day)")
    if len(sizes) > 1:
        print(f"each extra model: {sizes[2] - sizes[1]} bytes")


if __name__ == "__main__":
    main()
