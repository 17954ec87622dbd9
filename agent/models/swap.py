"""Hot swap: a new version loads, warms up and is validated beside the running one, then takes
over in one step; the old one drains and is freed. Readiness never drops; a version that fails
to load, warm up or pass the validation gate is refused and the old one keeps serving."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from agent.loading import load_version
from agent.service import ModelService
from agent.validation import golden_bundle, score_servable
from inference.errors import EdgeError
from inference.kinds import AUTO

log = logging.getLogger(__name__)


class SwapRejectedError(EdgeError):
    """The candidate version did not load, warm up or pass validation: the old one serves on."""


@dataclass(frozen=True)
class Gate:
    min_score: float = 0.0
    max_drop: float = 1.0


@dataclass(frozen=True)
class Candidate:
    path: Path
    sha256: str
    version: str
    kind: str
    source: str


def _check_kind(running: str, candidate: str, source: str, name: str) -> None:
    """A version of another kind would break every client of the model: refused. "auto" (not
    known before the graph is read) is checked again once the candidate has loaded."""
    if AUTO not in (running, candidate) and candidate != running:
        raise SwapRejectedError(
            f"{source}: a {candidate} model cannot replace the {running} model {name!r}"
        )


class Swapper:
    """One swap per model at a time."""

    def __init__(self, service: ModelService) -> None:
        self._service = service
        self._locks: dict[str, asyncio.Lock] = {}

    async def swap(self, name: str, candidate: Candidate, gate: Gate) -> float | None:
        """Returns the candidate's golden-set score (None: the model has no golden set)."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            return await self._swap(name, candidate, gate)

    async def _swap(self, name: str, candidate: Candidate, gate: Gate) -> float | None:
        service = self._service
        served = service.get(name)
        cfg = served.settings
        _check_kind(served.kind, candidate.kind, candidate.source, name)
        try:
            loaded = await load_version(
                service.settings, cfg, candidate.path, candidate.sha256,
                service.depth_observer(name), kind=candidate.kind,
            )
        except Exception as exc:
            raise SwapRejectedError(
                f"version {candidate.version} of {name!r} did not load: "
                f"{getattr(exc, 'message', exc)}"
            ) from exc
        try:
            _check_kind(served.kind, loaded.kind, candidate.source, name)
        except SwapRejectedError:
            await loaded.batcher.close(0)
            raise
        bundle = golden_bundle(served)
        score = None
        if bundle is not None:
            score = await asyncio.to_thread(score_servable, loaded.runner, bundle)
            running = served.validation_score
            reason = None
            if score < gate.min_score:
                reason = f"scored {score:.4f} < min_score {gate.min_score}"
            elif running is not None and running - score > gate.max_drop:
                reason = f"scored {score:.4f}, {running - score:.4f} under the running version"
            if reason is not None:
                await loaded.batcher.close(0)
                raise SwapRejectedError(
                    f"version {candidate.version} of {name!r} failed validation: {reason}",
                    {"score": score, "running": running},
                )
        old = served.batcher
        service.install(served, loaded, candidate.version)
        if score is not None:
            served.validation_score, served.validated_at = score, time.monotonic()
        served.source = candidate.source
        log.info("model swapped", extra={"model": name, "version": candidate.version,
                                         "score": score})
        if old is not None:  # drain: in-flight requests on the old version finish there
            await old.close(service.settings.drain_timeout_s)
        return score
