"""Hot swap: a new version loads, warms up and is validated beside the running one, then takes
over in one step; the old one drains and is freed (or, for a bake, is kept loaded as the shadow:
:mod:`agent.models.bake`). Readiness never drops; a version that fails to load, warm up or pass
the validation gate is refused and the old one keeps serving."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.loading import VersionSpec, load_version
from agent.models.policy import BakePolicy
from agent.models.trial import shadow_before_swap
from agent.records import UNCHECKED, VersionRecord
from agent.service import ModelService
from inference.errors import EdgeError, GoldenSetError
from inference.golden import GoldenSpec
from inference.kinds import AUTO

log = logging.getLogger(__name__)


class SwapRejectedError(EdgeError):
    """The candidate version did not load, warm up or pass validation: the old one serves on."""


class CandidateWithdrawnError(EdgeError):
    """Between the decision to swap and the swap, the candidate was rolled back or refused
    (a bake's rollback holds the swap lock while it records that): it is not loaded."""


@dataclass(frozen=True)
class Gate:
    min_score: float = 0.0
    max_drop: float = 1.0
    require_golden: bool = False  # refuse a candidate with no golden set (else: unchecked)


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

    def lock(self, name: str) -> asyncio.Lock:
        """Held through a swap of ``name``, and by whatever else replaces its version."""
        return self._locks.setdefault(name, asyncio.Lock())

    async def swap(self, name: str, spec: VersionSpec, gate: Gate, rollout: str,
                   keep_previous: bool = False, trial: BakePolicy | None = None,
                   withdrawn: Callable[[], Awaitable[bool]] | None = None,
                   ) -> tuple[VersionRecord, VersionRecord | None]:
        """Returns the candidate's record as published (its golden-set score, its gate) and
        the record it replaced. ``keep_previous``: that one is not drained but left loaded
        (the caller owns it: a bake keeps it as the shadow and the way back). ``trial``: the
        candidate is shadowed on live frames before it takes over (:mod:`agent.models.trial`)
        when a version is running. ``withdrawn``: asked once the lock is held; True raises
        :class:`CandidateWithdrawnError` (the caller's check, before it waited, may be stale)."""
        async with self.lock(name):
            if withdrawn is not None and await withdrawn():
                raise CandidateWithdrawnError(
                    f"version {spec.version} of {name!r} was rolled back or refused meanwhile")
            return await self._swap(name, spec, gate, rollout, keep_previous, trial)

    async def _swap(self, name: str, spec: VersionSpec, gate: Gate, rollout: str,
                    keep_previous: bool, trial: BakePolicy | None
                    ) -> tuple[VersionRecord, VersionRecord | None]:
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
            candidate = await self._gate(model.active, candidate, gate)
            if trial is not None and model.active is not None:
                shadowed = await shadow_before_swap(service, candidate, trial)
                candidate = dataclasses.replace(candidate, gate=candidate.gate + shadowed)
        except BaseException:
            await loaded.batcher.close(0)
            raise
        old = model.active
        service.publish(candidate)  # complete: score, rollout, source, labels
        log.info("model swapped", extra={"model": name, "version": candidate.version,
                                         "score": candidate.score, "gate": candidate.gate})
        if old is not None and not keep_previous:
            await retire(service, old)
        return candidate, old

    async def _gate(self, running: VersionRecord | None, candidate: VersionRecord,
                    gate: Gate) -> VersionRecord:
        """The candidate with its golden-set score and gate verdict, or SwapRejectedError."""
        what = f"version {candidate.version} of {candidate.model!r}"
        golden = candidate.golden
        if golden is None:
            if gate.require_golden:
                raise SwapRejectedError(f"{what} has no golden set and require_golden is set")
            log.warning("validation gate unchecked: the candidate has no golden set",
                        extra={"model": candidate.model, "version": candidate.version})
            return dataclasses.replace(candidate, gate=UNCHECKED)
        try:
            score = await self._service.score(candidate, golden, queued=False)
        except GoldenSetError as exc:
            raise SwapRejectedError(f"{what}: {exc.message}", exc.detail) from exc
        running_score, drop_unchecked = await self._running_score(running, golden)
        reason = None
        if score < gate.min_score:
            reason = f"scored {score:.4f} < min_score {gate.min_score}"
        elif running_score is not None and running_score - score > gate.max_drop:
            reason = f"scored {score:.4f}, {running_score - score:.4f} under the running version"
        if reason is not None:
            raise SwapRejectedError(f"{what} failed validation: {reason}",
                                    {"score": score, "running": running_score})
        verdict = f"passed: {golden.metric} {score:.4f} (min_score {gate.min_score})"
        if running_score is not None:
            verdict += f", {running_score - score:.4f} under the running version (max_drop " \
                       f"{gate.max_drop})"
        elif drop_unchecked:
            verdict += f"; max_drop unchecked: {drop_unchecked}"
            log.warning("max_drop unchecked", extra={"model": candidate.model,
                                                     "version": candidate.version,
                                                     "reason": drop_unchecked})
        return dataclasses.replace(candidate, score=score, scored_at=time.monotonic(),
                                   gate=verdict)

    async def _running_score(self, running: VersionRecord | None,
                             golden: GoldenSpec) -> tuple[float | None, str]:
        """The running version's score on the candidate's golden set (its recorded score when
        it was measured on that set; else measured now); or None and why not."""
        if running is None:
            return None, ""
        if running.score is not None and running.golden is not None \
                and running.golden.same_set(golden):
            return running.score, ""
        try:
            score = await self._service.score(running, golden, queued=False)
        except GoldenSetError as exc:  # a set for new classes or inputs the old one lacks
            return None, f"the running version cannot be scored on it: {exc.message}"
        if running.golden is not None and running.golden.same_set(golden):
            self._service.revise(running, score=score, scored_at=time.monotonic())
        return score, ""


async def retire(service: ModelService, record: VersionRecord) -> None:
    """Drain a version no longer published (in-flight requests finish there) and free it."""
    await record.batcher.close(service.settings.drain_timeout_s)
