"""Hot swap: a new version loads, warms up and is validated beside the running one, then takes
over in one step; the old one drains and is freed. Readiness never drops; a version that fails
to load, warm up or pass the validation gate is refused and the old one keeps serving."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass

from agent.golden_scoring import golden_bundle
from agent.loading import VersionSpec, load_version
from agent.records import VersionRecord
from agent.service import ModelService
from inference.bundled import Bundle
from inference.errors import EdgeError
from inference.kinds import AUTO

log = logging.getLogger(__name__)


class SwapRejectedError(EdgeError):
    """The candidate version did not load, warm up or pass validation: the old one serves on."""


@dataclass(frozen=True)
class Gate:
    min_score: float = 0.0
    max_drop: float = 1.0


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

    async def swap(self, name: str, spec: VersionSpec, gate: Gate, rollout: str) -> float | None:
        """Returns the candidate's golden-set score (None: the model has no golden set)."""
        async with self._locks.setdefault(name, asyncio.Lock()):
            return await self._swap(name, spec, gate, rollout)

    async def _swap(self, name: str, spec: VersionSpec, gate: Gate, rollout: str) -> float | None:
        service = self._service
        model = service.get(name)
        cfg = model.settings
        _check_kind(model.kind, spec.kind, spec.source, name)
        try:
            loaded = await load_version(service.settings, cfg, spec, service.depth_observer(name))
        except Exception as exc:
            raise SwapRejectedError(
                f"version {spec.version} of {name!r} did not load: "
                f"{getattr(exc, 'message', exc)}"
            ) from exc
        candidate = loaded.record(cfg, spec, rollout=rollout)
        try:
            _check_kind(model.kind, loaded.kind, spec.source, name)
            candidate = await self._gate(model.active, candidate, golden_bundle(cfg), gate)
        except BaseException:
            await loaded.batcher.close(0)
            raise
        old = model.active
        service.publish(candidate)  # complete: score, rollout, source, labels
        log.info("model swapped", extra={"model": name, "version": candidate.version,
                                         "score": candidate.score})
        if old is not None:  # drain: in-flight requests on the old version finish there
            await old.batcher.close(service.settings.drain_timeout_s)
        return candidate.score

    async def _gate(self, running: VersionRecord | None, candidate: VersionRecord,
                    bundle: Bundle | None, gate: Gate) -> VersionRecord:
        """The candidate with its golden-set score, or SwapRejectedError."""
        if bundle is None:
            return candidate
        score = await self._service.score(candidate, bundle, queued=False)
        running_score = None
        if running is not None:
            # The drop is measured on the same golden set: a running version not scored yet
            # (its start-up scoring still queued, or refused under load) is scored now.
            running_score = running.score
            if running_score is None:
                running_score = await self._service.score(running, bundle, queued=False)
                self._service.revise(running, score=running_score, scored_at=time.monotonic())
        reason = None
        if score < gate.min_score:
            reason = f"scored {score:.4f} < min_score {gate.min_score}"
        elif running_score is not None and running_score - score > gate.max_drop:
            reason = f"scored {score:.4f}, {running_score - score:.4f} under the running version"
        if reason is not None:
            raise SwapRejectedError(
                f"version {candidate.version} of {candidate.model!r} failed validation: {reason}",
                {"score": score, "running": running_score},
            )
        return dataclasses.replace(candidate, score=score, scored_at=time.monotonic())
