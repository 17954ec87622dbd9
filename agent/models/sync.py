"""Bringing the node to the fleet manifest: resolve, download, verify, swap, remember.

Every ``poll_interval_s`` (and on ``POST /v1/admin/sync``) the manifest is read; for each
served model the node's target (stable, or canary when the node is in the cohort) is resolved;
a version not running yet is downloaded into the cache and hot-swapped in, and ``state.json``
records it as last-known-good, so the next start needs no network. A source that cannot be
reached leaves everything as it is and marks the control plane disconnected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from agent.loading import VersionSpec, spec_from_sidecar
from agent.models.bake import Baker
from agent.models.cache import CachedVersion, ModelCache, parse_digest
from agent.models.manifest import ModelPlan, parse_manifest
from agent.models.memory import room_for
from agent.models.sources import Fetcher, Resolved, UnreachableError
from agent.models.swap import CandidateWithdrawnError, Gate, Swapper
from agent.models.trial import ShadowRefusedError
from agent.records import VersionRecord
from agent.service import ModelService
from inference.errors import EdgeError

log = logging.getLogger(__name__)


@dataclass
class SyncStatus:
    connected: bool | None = None  # None: never tried
    last_success: float | None = None  # wall-clock time of the last complete sync
    cohorts: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class Syncer:
    def __init__(
        self,
        service: ModelService,
        fetcher: Fetcher,
        cache: ModelCache,
        swapper: Swapper,
        manifest_ref: str,
        node_name: str,
        keep_versions: int,
    ) -> None:
        self._service = service
        self._fetcher = fetcher
        self._cache = cache
        self._swapper = swapper
        self._manifest_ref = manifest_ref
        self._node = node_name
        self._keep = keep_versions
        self._lock = asyncio.Lock()
        self.status = SyncStatus()
        self.baker = Baker(service, swapper, self._reject)

    async def sync(self) -> dict[str, Any]:
        """One pass; returns what happened per model (for the admin endpoint and the log)."""
        async with self._lock:
            return await self._sync()

    async def _sync(self) -> dict[str, Any]:
        try:
            raw = await self._fetcher.read(self._manifest_ref)
            plans = parse_manifest(raw.decode())
        except UnreachableError as exc:
            self.status.connected = False
            log.warning("fleet manifest unreachable", extra={"error": exc.message})
            return {"manifest": exc.message}
        except EdgeError as exc:  # reachable, but not a valid manifest: keep what runs
            self.status.connected = True
            log.error("fleet manifest refused", extra={"error": exc.message})
            return {"manifest": f"refused: {exc.message}"}
        report: dict[str, Any] = {}
        reachable = True
        for name, plan in plans.items():
            if name not in self._service.models:
                report[name] = "not served on this node"
                continue
            try:
                report[name] = await self._apply(plan)
                self.status.errors.pop(name, None)
            except UnreachableError as exc:
                report[name] = exc.message
                reachable = False
            except EdgeError as exc:
                report[name] = f"refused: {exc.message}"
                self.status.errors[name] = exc.message
        self.status.connected = reachable
        if reachable:
            self.status.last_success = time.time()
        # The lease: what this process serves now (the pass's downloads that were not swapped
        # in are released to other processes' garbage collection).
        await asyncio.to_thread(self._cache.serve, self._served())
        return report

    @property
    def swapper(self) -> Swapper:
        """Whoever replaces a model's version holds its ``swapper.lock(name)`` meanwhile."""
        return self._swapper

    def _served(self, *more: VersionRecord) -> set[str]:
        """The blobs of every version this process holds loaded (active, shadows, ``more``)."""
        records = [*self._service.active(), *(s.record for s in self._service.shadows.values()),
                   *more]
        golden = {r.golden.sha256.removeprefix("sha256:") for r in records if r.golden}
        return {r.digest for r in records} | (golden - {""})

    async def _apply(self, plan: ModelPlan) -> str:
        target, cohort = plan.choose(self._node)
        self.status.cohorts[plan.name] = cohort
        resolved: Resolved = await self._fetcher.resolve(target.source)
        digest = parse_digest(resolved.digest)
        running = self._service.get(plan.name).active
        if running is not None and digest == running.digest:
            self._service.revise(running, source=target.source, rollout=cohort)
            self.baker.revise(plan.name, plan.bake)  # a bake judges by the manifest as it is
            return f"running {running.version} ({cohort})"
        if running is not None and running.rollout == "canary":
            # Whatever it was, the running version is not this target: until the target is
            # swapped in (or if it is refused) the node does not run the canary, and
            # edge_model_canary says so, or the fleet controller would count a node that
            # refused the canary as one running it.
            self._service.revise(running, rollout="stable")
        not_retried = (f"not retried: {resolved.version} was rolled back or refused on this "
                       f"node (until the manifest names another version)")

        async def is_rejected() -> bool:
            rejected = await asyncio.to_thread(self._cache.rejected)
            return rejected.get(plan.name) == digest

        rejected = await asyncio.to_thread(self._cache.rejected)
        if rejected.get(plan.name) == digest:
            return not_retried
        if plan.name in rejected:
            await asyncio.to_thread(self._cache.forgive, plan.name)
        path = await self._fetcher.fetch(resolved)
        spec = dataclasses.replace(
            spec_from_sidecar(path, resolved.sidecar, target.source, sha256=digest,
                              golden_path=self._fetcher.golden_path(resolved),
                              variant_path=self._fetcher.variant_path),
            version=resolved.version,
            max_drop=plan.variant_max_drop,
        )
        gate = Gate(plan.min_score, plan.max_drop, plan.require_golden)
        await self.baker.finish(plan.name)  # a bake in progress ends: its previous version goes
        policy = plan.bake
        second = running is not None and (policy.bake_s > 0 or policy.shadow.before_swap_s > 0) \
            and self._room(plan.name, spec.path)
        bake = second and policy.bake_s > 0
        try:
            record, previous = await self._swapper.swap(
                plan.name, spec, gate, cohort, keep_previous=bake,
                trial=policy if second and policy.shadow.before_swap_s > 0 else None,
                # A bake may roll this very version back while it downloads: the rollback
                # records it under the swap lock, so it is looked up again under that lock.
                withdrawn=is_rejected)
        except CandidateWithdrawnError:
            return not_retried
        except ShadowRefusedError:
            await asyncio.to_thread(self._cache.reject, plan.name, digest)
            log.warning("candidate refused after its shadow run: not retried until the "
                        "manifest names another version",
                        extra={"model": plan.name, "version": spec.version})
            raise
        # (the previous version kept for the bake stays this process's)
        held = self._served(*([previous] if bake and previous is not None else []))
        await asyncio.to_thread(self._remember, plan.name, spec, resolved, held)
        if bake and previous is not None:
            await self.baker.start(record, previous, policy)
        return f"swapped to {spec.version} ({cohort}, score {record.score}, gate {record.gate})"

    def _room(self, name: str, path: Path) -> bool:
        """Room for the candidate's sessions and a shadow session beside the running version,
        keeping ``min_free_memory_mb`` free; else no shadow and no bake, said once a swap."""
        min_free = self._service.settings.lifecycle.min_free_memory_mb * 1024 * 1024
        room, needed, available = room_for(path, sessions=2, min_free_bytes=min_free)
        if not room:
            log.warning("no room for two versions: swapping with no shadow and no bake",
                        extra={"model": name, "needed_bytes": needed,
                               "available_bytes": available})
        return room

    async def _reject(self, bad: VersionRecord) -> None:
        await asyncio.to_thread(self._cache.reject, bad.model, bad.digest)

    async def close(self) -> None:
        await self.baker.close()

    def _remember(self, name: str, spec: VersionSpec, resolved: Resolved,
                  served: set[str]) -> None:
        """(In a worker thread: it takes the state dir's lock.)"""
        version = CachedVersion(spec.version, spec.sha256, resolved.sidecar, spec.source)
        keep = self._cache.remember(name, version, self._keep)
        self._cache.serve(served)  # the version swapped out is no longer this process's
        self._cache.collect_garbage(keep)

    async def run(self, interval_s: float, watch_s: float = 2.0) -> None:
        """Sync every ``interval_s``, and within ``watch_s`` of a change to a file manifest
        (a ConfigMap update swaps a symlink: ``stat`` follows it to the new file)."""
        while True:
            seen = self._manifest_stamp()
            try:
                report = await self.sync()
            except Exception:  # a bug must not end syncing for the months the node runs
                log.exception("model sync failed")
            else:
                log.info("model sync", extra={"report": report})
            deadline = time.monotonic() + interval_s
            while time.monotonic() < deadline:
                await asyncio.sleep(min(watch_s, interval_s) if watch_s > 0 else interval_s)
                if watch_s > 0 and self._manifest_stamp() != seen:
                    break

    def _manifest_stamp(self) -> tuple[int, int, int] | None:
        if not self._manifest_ref.startswith("file://"):
            return None
        try:
            st = Path(unquote(urlparse(self._manifest_ref).path)).stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)
