"""What a fleet manifest says of a model's second loaded version: how long a candidate is
shadowed before its swap, how long the previous version stays after it (the bake), and the
gates either judges by."""

from __future__ import annotations

from dataclasses import dataclass, field

from agent.shadow import ShadowPolicy

CHECK_S = 0.5  # how often a bake or a shadowed candidate looks at the score and the agreement


@dataclass(frozen=True)
class BakePolicy:
    bake_s: float = 0.0  # 0: no bake, no shadow (the previous version is unloaded at once)
    min_agreement: float | None = None  # None: the agreement is reported, never acted on
    min_samples: int = 20
    min_score: float = 0.0
    shadow: ShadowPolicy = field(default_factory=ShadowPolicy)
