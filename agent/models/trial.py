"""A candidate shadowed on live frames before its swap.

With ``shadow.before_swap_s`` set, a candidate that passed its golden-set gate does not take
over at once: for up to that long a sample of the live requests also runs on it
(:mod:`agent.shadow`, lowest priority, never delaying a live answer) while the running version
answers. Once ``min_samples`` samples are in, an agreement under ``min_agreement`` refuses the
candidate (the running version never stopped serving); otherwise it is swapped in. Too few
samples in the time (little traffic) leave the check to the bake after the swap, and say so.
"""

from __future__ import annotations

import asyncio
import logging
import time

from agent.models.policy import CHECK_S, BakePolicy
from agent.records import VersionRecord
from agent.service import ModelService
from agent.shadow import open_shadow
from inference.errors import EdgeError

log = logging.getLogger(__name__)


class ShadowRefusedError(EdgeError):
    """The candidate disagreed with the running version on live frames: it is not swapped in
    and not retried until the manifest names another version."""


async def shadow_before_swap(service: ModelService, candidate: VersionRecord,
                             policy: BakePolicy) -> str:
    """Shadow ``candidate`` (loaded, not published) for up to ``before_swap_s``; returns how
    it went (for the gate's verdict), or raises :class:`ShadowRefusedError`."""
    name = candidate.model
    shadow = await open_shadow(service.settings, candidate, policy.shadow, "before swap")
    service.shadows[name] = shadow
    log.info("shadowing the candidate before its swap",
             extra={"model": name, "version": candidate.version,
                    "before_swap_s": policy.shadow.before_swap_s})
    deadline = time.monotonic() + policy.shadow.before_swap_s
    try:
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(CHECK_S, left))
            if policy.min_agreement is not None and shadow.window_samples >= policy.min_samples:
                break  # enough to judge
    finally:
        if service.shadows.get(name) is shadow:
            del service.shadows[name]
        shadow.close()
    agreement, samples = shadow.agreement, shadow.window_samples
    shown = "none" if agreement is None else f"{agreement:.4f}"
    if policy.min_agreement is None:
        return f"; shadowed before the swap: agreement {shown} over {samples} samples"
    if samples < policy.min_samples:
        log.warning("shadow before the swap unchecked: too few samples",
                    extra={"model": name, "version": candidate.version, "samples": samples,
                           "min_samples": policy.min_samples})
        return (f"; shadow before the swap unchecked: {samples} samples < min_samples "
                f"{policy.min_samples}")
    assert agreement is not None
    if agreement < policy.min_agreement:
        raise ShadowRefusedError(
            f"version {candidate.version} of {name!r} disagreed with the running version on "
            f"live frames before its swap: agreement {agreement:.4f} < min_agreement "
            f"{policy.min_agreement} over {samples} samples",
            {"agreement": agreement, "samples": samples})
    return f"; shadowed before the swap: agreement {agreement:.4f} over {samples} samples"
