"""Open-loop load for the benchmarks and for the overload and soak tests: requests leave on a
schedule, whether or not earlier ones have been answered (a closed loop would slow down with the
server and hide the queueing), and every answer is kept with its send time, status and latency."""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np


@dataclass(frozen=True)
class Answer:
    sent_at: float  # monotonic
    status: int  # 0: the connection failed
    latency_s: float
    reason: str = ""  # the JSON error, for a refusal


@dataclass
class Load:
    answers: list[Answer] = field(default_factory=list)

    def between(self, start: float, end: float) -> list[Answer]:
        return [a for a in self.answers if start <= a.sent_at < end]


async def open_loop(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    rate_per_s: float,
    duration_s: float,
    into: Load,
) -> None:
    """``rate_per_s`` requests a second for ``duration_s``; returns when all are answered."""
    interval = 1.0 / rate_per_s
    start = time.monotonic()
    tasks: list[asyncio.Task[None]] = []
    n = 0
    while (due := start + n * interval) < start + duration_s:
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(http, url, body, headers, into)))
        n += 1
    await asyncio.gather(*tasks)


async def _one(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], into: Load
) -> None:
    sent = time.monotonic()
    try:
        async with http.post(url, data=body, headers=headers) as resp:
            payload = await resp.read()
            reason = ""
            if resp.status >= 400:
                reason = payload.decode(errors="replace")[:200]
            into.answers.append(Answer(sent, resp.status, time.monotonic() - sent, reason))
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        into.answers.append(Answer(sent, 0, time.monotonic() - sent, repr(exc)))


RETRY_AT_ONCE, RETRY_AFTER = "at once", "Retry-After"


async def closed_loop(
    http: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    cameras: int,
    duration_s: float,
    into: Load,
    retry: str = RETRY_AFTER,
) -> None:
    """``cameras`` cameras, each posting its next frame when the answer to the last arrives.
    A refused frame (503, or a failed connection) is sent again: ``RETRY_AT_ONCE`` as a simple
    camera loop does, or ``RETRY_AFTER`` waiting what the 503's ``Retry-After`` says (capped at
    a second; a failed connection waits 50 ms). Every answer is kept, refusals included."""

    async def camera() -> None:
        end = time.monotonic() + duration_s
        while (sent := time.monotonic()) < end:
            wait = 0.0
            try:
                async with http.post(url, data=body, headers=headers) as resp:
                    payload = await resp.read()
                    status = resp.status
                    reason = "" if status < 400 else payload.decode(errors="replace")[:200]
                    if status == 503 and retry == RETRY_AFTER:
                        wait = min(1.0, float(resp.headers.get("Retry-After", "0") or 0))
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                status, reason = 0, repr(exc)
                wait = 0.05 if retry == RETRY_AFTER else 0.0
            into.answers.append(Answer(sent, status, time.monotonic() - sent, reason))
            if wait:
                await asyncio.sleep(wait)

    await asyncio.gather(*(camera() for _ in range(cameras)))


async def capacity(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str],
    duration_s: float = 3.0, clients: int = 2,
) -> float:
    """Answers per second with ``clients`` back-to-back clients: the sustainable rate."""
    done = 0
    end = time.monotonic() + duration_s

    async def client() -> None:
        nonlocal done
        while time.monotonic() < end:
            async with http.post(url, data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 200, resp.status
                done += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done / duration_s


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU time (user + system) of a process, or of one of its threads (``tid``)."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_stats(pid: int) -> dict[str, int]:
    """RSS bytes, open file descriptors and threads of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    fields = {k: v.split()[0] for k, v in fields.items() if v.split()}
    return {
        "rss": int(fields["VmRSS"]) * 1024,
        "threads": int(fields["Threads"]),
        "fds": len(list(Path(f"/proc/{pid}/fd").iterdir())),
    }
