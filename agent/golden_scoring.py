"""Score each model's version on its golden set (its own, or the model's), on this node,
through the serving pipeline itself.

Runs once the models are ready, in the background, one golden sample at a time so live traffic
interleaves with it. The score is what ``edge_model_validation_score`` reports: on a node, not
at training time, so a wrong provider, a corrupt engine or a bad preprocessing build shows up as
a lower number. A swap gates its candidate on the same score (:mod:`agent.models.swap`).
"""

from __future__ import annotations

import logging
import time

from agent.service import ModelService

log = logging.getLogger(__name__)


async def score_all(service: ModelService, idle_only: bool = False) -> None:
    """Score every model that has a golden set; ``idle_only``: skip models with work queued
    (the periodic re-scoring must not compete with cameras)."""
    for model in service.models.values():
        record = model.active
        if record is None or (idle_only and record.batcher.busy):
            continue
        golden = record.golden
        if golden is None:
            continue
        try:
            score = await service.score(record, golden)
        except Exception as exc:  # a failed self-test is reported, it does not stop serving
            log.warning("golden-set scoring failed",
                        extra={"model": model.name, "error": str(exc)})
            continue
        # A version swapped in meanwhile keeps its own score: this one scored the old version.
        service.revise(record, score=score, scored_at=time.monotonic())
        log.info(
            "golden-set score",
            extra={"model": model.name, "version": record.version, "score": round(score, 4),
                   "recorded": golden.packed_score},
        )
