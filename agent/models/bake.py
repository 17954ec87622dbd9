"""The bake after a swap: the previous version stays loaded as the shadow for ``bake_s``,
and the swap is undone if the new version proves worse on this node.

During the bake a sample of live requests also runs on the previous version
(:mod:`agent.shadow`), and the new version is scored on its golden set through its live queue
(the whole served path: batching, the thread layout, the provider as it serves) at the start of
the bake and every quarter of it. A score under ``min_score``, or a shadow agreement under
``min_agreement`` over at least ``min_samples`` samples, publishes the previous record again and
drains the new one like a swap does (no request fails); the caller records the bad version so
it is not retried. The gates are the manifest's as it reads now: a sync that finds the model
baking hands the bake the manifest's current policy. After ``bake_s`` with no rollback the
previous version is drained and unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from agent.malloc import release_free_memory
from agent.models.policy import CHECK_S, BakePolicy
from agent.models.swap import Swapper, retire
from agent.records import VersionRecord
from agent.service import ModelService
from agent.shadow import Shadow, open_shadow

log = logging.getLogger(__name__)

MIN_SCORE_EVERY_S = 5.0  # a bake scores its version every quarter of it, at most this often


class Baker:
    """One bake per model at a time; a new swap of the model ends the running one first."""

    def __init__(self, service: ModelService, swapper: Swapper,
                 on_rollback: Callable[[VersionRecord], Awaitable[None]]) -> None:
        self._service = service
        self._swapper = swapper
        self._on_rollback = on_rollback  # records the bad version (state.json)
        self._bakes: dict[str, asyncio.Task[None]] = {}
        self._policies: dict[str, BakePolicy] = {}

    async def start(self, new: VersionRecord, previous: VersionRecord,
                    policy: BakePolicy) -> bool:
        """Keep ``previous`` loaded as the shadow of ``new`` for the bake; False (and
        ``previous`` unloaded) when its shadow session could not be built."""
        try:
            shadow = await open_shadow(self._service.settings, previous, policy.shadow, "bake")
        except Exception as exc:
            log.warning("no bake: the previous version's shadow session did not load",
                        extra={"model": new.model, "error": str(exc)})
            await self._unload(previous)
            return False
        self._service.shadows[new.model] = shadow
        self._policies[new.model] = policy
        self._bakes[new.model] = asyncio.get_running_loop().create_task(
            self._bake(new, shadow, policy), name=f"bake-{new.model}")
        log.info("baking: the previous version stays loaded as the shadow",
                 extra={"model": new.model, "version": new.version,
                        "previous": previous.version, "bake_s": policy.bake_s})
        return True

    def revise(self, name: str, policy: BakePolicy) -> None:
        """The manifest's gates as they read now, for a bake in progress (its length stays)."""
        if self.baking(name):
            self._policies[name] = policy

    def baking(self, name: str) -> bool:
        task = self._bakes.get(name)
        return task is not None and not task.done()

    async def finish(self, name: str) -> None:
        """End ``name``'s bake now (a newer swap comes): the previous version is unloaded."""
        task = self._bakes.pop(name, None)
        self._policies.pop(name, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        for name in list(self._bakes):
            await self.finish(name)

    async def _bake(self, new: VersionRecord, shadow: Shadow, policy: BakePolicy) -> None:
        started = time.monotonic()
        scoring = asyncio.get_running_loop().create_task(self._score(new, policy.bake_s))
        try:
            while (left := started + policy.bake_s - time.monotonic()) > 0:
                await asyncio.sleep(min(CHECK_S, left))
                reason = self._verdict(new, shadow, self._policies.get(new.model, policy),
                                       started)
                if reason:
                    await self._roll_back(new, shadow, reason)
                    return
            log.info("bake passed: the previous version is unloaded",
                     extra={"model": new.model, "version": new.version,
                            "previous": shadow.record.version, "samples": shadow.samples,
                            "agreement": shadow.agreement})
        finally:
            scoring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await scoring
            if self._service.shadows.get(new.model) is shadow:
                del self._service.shadows[new.model]
            shadow.close()
            if self._service.models[new.model].active is not shadow.record:  # not rolled back
                await asyncio.shield(self._unload(shadow.record))

    async def _score(self, new: VersionRecord, bake_s: float) -> None:
        """Score the new version through its live queue now and every quarter of the bake
        (the re-scoring :meth:`_verdict` judges; it revises the published record)."""
        golden = new.golden
        if golden is None:
            return
        every = max(bake_s / 4, MIN_SCORE_EVERY_S)
        service = self._service
        while True:
            active = service.models[new.model].active
            if active is None or active.batcher is not new.batcher:
                return
            try:
                score = await service.score(active, golden)
            except Exception as exc:  # refused under load, say: tried again next time
                log.warning("bake: golden-set scoring failed",
                            extra={"model": new.model, "error": str(exc)})
            else:
                service.revise(active, score=score, scored_at=time.monotonic())
                log.info("bake: golden-set score", extra={
                    "model": new.model, "version": new.version, "score": round(score, 4)})
            await asyncio.sleep(every)

    async def _unload(self, record: VersionRecord) -> None:
        await retire(self._service, record)
        await asyncio.to_thread(release_free_memory)

    def _verdict(self, new: VersionRecord, shadow: Shadow, policy: BakePolicy,
                 started: float) -> str:
        """Why to roll back now; empty: not (yet)."""
        active = self._service.models[new.model].active
        if active is None or active.batcher is not new.batcher:
            return ""  # replaced meanwhile: nothing of this bake to judge
        if active.score is not None and active.scored_at is not None \
                and active.scored_at >= started and active.score < policy.min_score:
            return f"golden-set score {active.score:.4f} < min_score {policy.min_score}"
        agreement = shadow.agreement
        if policy.min_agreement is not None and agreement is not None \
                and shadow.window_samples >= policy.min_samples \
                and agreement < policy.min_agreement:
            return (f"shadow agreement {agreement:.4f} < min_agreement {policy.min_agreement} "
                    f"over {shadow.window_samples} samples")
        return ""

    async def _roll_back(self, new: VersionRecord, shadow: Shadow, reason: str) -> None:
        service = self._service
        async with self._swapper.lock(new.model):
            bad = service.models[new.model].active
            if bad is None or bad.batcher is not new.batcher:
                return
            if service.shadows.get(new.model) is shadow:
                del service.shadows[new.model]
            service.publish(shadow.record)  # the previous record again, its queue still open
            service.rollbacks[new.model] = service.rollbacks.get(new.model, 0) + 1
            service.last_rollback[new.model] = {
                "version": bad.version, "digest": f"sha256:{bad.digest}", "reason": reason,
                "agreement": shadow.agreement, "samples": shadow.samples}
            log.warning("model rolled back", extra={
                "model": new.model, "version": bad.version, "to": shadow.record.version,
                "reason": reason})
            # Shielded: a bake ended meanwhile (a newer swap, a shutdown) still records and
            # frees the bad version.
            await asyncio.shield(self._forget(bad))

    async def _forget(self, bad: VersionRecord) -> None:
        try:
            await self._on_rollback(bad)
        except Exception:  # the rollback stands; only its record on disk failed
            log.exception("could not record the rolled-back version")
        await self._unload(bad)
