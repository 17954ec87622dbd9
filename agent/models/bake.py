"""The bake after a swap: the previous version stays loaded as the shadow for ``bake_s``,
and the swap is undone if the new version proves worse on this node.

During the bake a sample of live requests also runs on the previous version
(:mod:`agent.shadow`). A golden-set score of the new version measured after the swap (the
periodic re-scoring) under ``min_score``, or a shadow agreement under ``min_agreement`` over at
least ``min_samples`` samples, publishes the previous record again and drains the new one like a
swap does (no request fails); the caller records the bad version so it is not retried. After
``bake_s`` with no rollback the previous version is drained and unloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.malloc import release_free_memory
from agent.models.swap import Swapper, retire
from agent.records import VersionRecord
from agent.service import ModelService
from agent.shadow import Shadow, ShadowPolicy

log = logging.getLogger(__name__)

CHECK_S = 0.5  # how often a bake looks at the score and the agreement


@dataclass(frozen=True)
class BakePolicy:
    bake_s: float = 0.0  # 0: no bake, no shadow (the previous version is unloaded at once)
    min_agreement: float | None = None  # None: the agreement is reported, never acted on
    min_samples: int = 20
    min_score: float = 0.0
    shadow: ShadowPolicy = field(default_factory=ShadowPolicy)


class Baker:
    """One bake per model at a time; a new swap of the model ends the running one first."""

    def __init__(self, service: ModelService, swapper: Swapper,
                 on_rollback: Callable[[VersionRecord], Awaitable[None]]) -> None:
        self._service = service
        self._swapper = swapper
        self._on_rollback = on_rollback  # records the bad version (state.json)
        self._bakes: dict[str, asyncio.Task[None]] = {}

    def start(self, new: VersionRecord, previous: VersionRecord, policy: BakePolicy) -> None:
        shadow = Shadow(previous, policy.shadow)
        self._service.shadows[new.model] = shadow
        self._bakes[new.model] = asyncio.get_running_loop().create_task(
            self._bake(new, shadow, policy), name=f"bake-{new.model}")
        log.info("baking: the previous version stays loaded as the shadow",
                 extra={"model": new.model, "version": new.version,
                        "previous": previous.version, "bake_s": policy.bake_s})

    def baking(self, name: str) -> bool:
        task = self._bakes.get(name)
        return task is not None and not task.done()

    async def finish(self, name: str) -> None:
        """End ``name``'s bake now (a newer swap comes): the previous version is unloaded."""
        task = self._bakes.pop(name, None)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def close(self) -> None:
        for name in list(self._bakes):
            await self.finish(name)

    async def _bake(self, new: VersionRecord, shadow: Shadow, policy: BakePolicy) -> None:
        started = time.monotonic()
        try:
            while (left := started + policy.bake_s - time.monotonic()) > 0:
                await asyncio.sleep(min(CHECK_S, left))
                reason = self._verdict(new, shadow, policy, started)
                if reason:
                    await self._roll_back(new, shadow, reason)
                    return
            log.info("bake passed: the previous version is unloaded",
                     extra={"model": new.model, "version": new.version,
                            "previous": shadow.record.version, "samples": shadow.samples,
                            "agreement": shadow.agreement})
        finally:
            if self._service.shadows.get(new.model) is shadow:
                del self._service.shadows[new.model]
            if self._service.models[new.model].active is not shadow.record:  # not rolled back
                await asyncio.shield(self._unload(shadow.record))

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
