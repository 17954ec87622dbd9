"""The rollout decision, case by case: what the fleet reports -> step, hold, promote or roll
back, and why."""

from __future__ import annotations

import dataclasses

import pytest

from agent.fleet.policy import (
    Decision,
    Gates,
    ModelEntry,
    NodeObs,
    RolloutPolicy,
    Status,
    decide,
    parse_entry,
)
from agent.models.manifest import ManifestError, in_canary

MODEL = "defects"
STABLE, CANARY = "oci://r:5000/models/defects:1.1.0", "oci://r:5000/models/defects:1.2.0"
POLICY = RolloutPolicy((5.0, 25.0, 100.0), bake_s=600, min_nodes=2, max_error_ratio=1.5,
                       max_p99_ratio=1.5)
GATES = Gates(min_score=0.8, max_drop=0.02, min_agreement=0.9)
NOW = 1_800_000_000.0

# 200 node names; which are in the 5 % and 25 % cohorts is the nodes' own hash.
NAMES = [f"line{i // 50}-node{i:03d}" for i in range(200)]
AT5 = [n for n in NAMES if in_canary(n, MODEL, 5)]
AT25 = [n for n in NAMES if in_canary(n, MODEL, 25)]
OUT = [n for n in NAMES if not in_canary(n, MODEL, 100 - 1e-9) or not in_canary(n, MODEL, 25)]


def entry(percent: float = 5, gates: Gates = GATES, policy: RolloutPolicy = POLICY,
          canary: str | None = CANARY) -> ModelEntry:
    return ModelEntry(MODEL, STABLE, canary, percent if canary else 0.0, gates, policy)


def obs(name: str, canary: bool, **kw) -> NodeObs:
    base = dict(node=name, up=True, up_in_window=True, ready=True, connected=True,
                last_sync=NOW - 1,
                canary=canary, version="1.2.0" if canary else "1.1.0", score=0.86,
                agreement=0.97 if canary else None, p99=0.040, requests=1000.0, errors=0.0)
    base.update(kw)
    return NodeObs(**base)


def fleet(percent: float, canary_kw: dict | None = None, stable_kw: dict | None = None,
          n_stable: int = 20) -> list[NodeObs]:
    """Every node of the ``percent`` cohort on the canary, ``n_stable`` others on stable."""
    inside = [n for n in NAMES if in_canary(n, MODEL, percent)]
    outside = [n for n in NAMES if not in_canary(n, MODEL, percent)][:n_stable]
    return ([obs(n, True, **(canary_kw or {})) for n in inside]
            + [obs(n, False, **(stable_kw or {})) for n in outside])


def baking(percent: float = 5, since: float = NOW - 700, **kw) -> Status:
    return Status("canary", CANARY, percent, since, "", **kw)


def test_the_name_lists_are_what_the_cases_assume():
    assert 2 <= len(AT5) < 20, AT5  # min_nodes 2 can be met at 5 %; 1 request each is < 20
    assert set(AT5) < set(AT25)


CASES: list[tuple[str, ModelEntry, Status, list[NodeObs], str, float | None, str]] = [
    ("no canary", entry(canary=None), Status(), fleet(5), "hold", None, "no canary"),
    ("a new canary starts at the first step", entry(5), Status(), fleet(5), "step", 5.0,
     "starts at 5%"),
    ("a canary named at 40% by hand starts at the first step", entry(40), Status(), [], "step",
     5.0, "starts at 5%"),
    ("another canary replaces the one in progress", entry(5),
     Status("canary", "oci://other:1", 25, NOW - 10), fleet(5), "step", 5.0, "starts"),
    ("baking: held until bake_s", entry(5), baking(since=NOW - 100), fleet(5), "hold", 5.0,
     "baking at 5%: 100 s of 600 s"),
    ("baked and healthy: next step", entry(5), baking(), fleet(5), "step", 25.0, "next 25%"),
    ("baked and healthy at 25%: 100", entry(25), baking(25), fleet(25), "step", 100.0,
     "next 100%"),
    ("baked and healthy at 100%: promoted", entry(100),
     baking(100, baseline={"score": 0.86, "p99": 0.04}), fleet(100), "promote", 100.0,
     "healthy on"),
    ("fewer than min_nodes reports: held, never promoted", entry(100), baking(100),
     fleet(100)[:1], "hold", 100.0, "1 healthy canary report(s) at 100%"),
    ("a canary node without a score does not count", entry(5), baking(),
     fleet(5, canary_kw={"score": None}), "hold", 5.0, "0 healthy canary report(s)"),
    ("a canary node without agreement does not count (min_agreement set)", entry(5), baking(),
     fleet(5, canary_kw={"agreement": None}), "hold", 5.0, "0 healthy"),
    ("no agreement needed without min_agreement", entry(5, Gates(0.8, 0.02, None)), baking(),
     fleet(5, canary_kw={"agreement": None}), "step", 25.0, "next 25%"),
    ("score under min_score: rolled back, even while baking", entry(5),
     baking(since=NOW - 5), fleet(5, canary_kw={"score": 0.5}), "rollback", None,
     "scores 0.500, under min_score 0.8"),
    ("score dropped more than max_drop against stable", entry(5), baking(),
     fleet(5, canary_kw={"score": 0.83}), "rollback", None, "0.030 under stable 0.860"),
    ("a drop within max_drop passes", entry(5), baking(),
     fleet(5, canary_kw={"score": 0.845}), "step", 25.0, "next"),
    ("agreement under min_agreement", entry(5), baking(),
     fleet(5, canary_kw={"agreement": 0.6}), "rollback", None,
     "agreement 0.600, under min_agreement 0.9"),
    ("error ratio over max_error_ratio", entry(5), baking(),
     fleet(5, canary_kw={"errors": 50.0}, stable_kw={"errors": 10.0}), "rollback", None,
     "error rate 5.00% against stable 1.00%"),
    ("errors within the ratio pass", entry(5), baking(),
     fleet(5, canary_kw={"errors": 14.0}, stable_kw={"errors": 10.0}), "step", 25.0, "next"),
    ("a stable fleet with no errors: the floor, not a division by zero", entry(5), baking(),
     fleet(5, canary_kw={"errors": 1.0}), "step", 25.0, "next"),
    ("too few requests to judge errors", entry(5), baking(),
     fleet(5, canary_kw={"errors": 1.0, "requests": 1.0}), "step", 25.0, "next"),
    ("p99 over max_p99_ratio", entry(5), baking(),
     fleet(5, canary_kw={"p99": 0.1}), "rollback", None, "2.50x stable"),
    ("a canary node not ready", entry(5), baking(since=NOW - 5),
     fleet(5, canary_kw={"ready": False}), "rollback", None, "is not ready"),
    ("a cohort node that went down during the step", entry(5), baking(since=NOW - 5),
     [dataclasses.replace(o, up=False) if o.node == AT5[0] else o for o in fleet(5)],
     "rollback", None, f"{AT5[0]} (canary cohort) went down"),
    ("a cohort node down all along does not count, and blocks nothing else", entry(5),
     baking(), [dataclasses.replace(o, up=False, up_in_window=False) if o.node == AT5[0]
                else o for o in [*fleet(5), obs(AT25[-1], True)]], "step", 25.0, "next"),
    ("after the bake, a synced cohort node on stable refused or rolled back the canary",
     entry(5), baking(), [obs(AT5[0], False), *fleet(5)[1:]], "rollback", None,
     f"{AT5[0]} is in the 5% cohort but serves 1.1.0"),
    ("before the bake ends, it may just not have synced yet", entry(5),
     baking(since=NOW - 100), [obs(AT5[0], False), *fleet(5)[1:]], "hold", 5.0, "baking"),
    ("a cohort node that has not synced since the step is late, not blamed", entry(5),
     baking(), [obs(AT5[0], False, last_sync=NOW - 800), *fleet(5)[1:]], "step", 25.0, "next"),
    ("a cohort node cut off from the control plane is not blamed", entry(5), baking(),
     [obs(AT5[0], False, connected=False), *fleet(5)[1:], obs(AT25[-1], True)], "step",
     25.0, "next"),
    ("at 100% the stable figures are the baseline recorded at the last step", entry(100),
     baking(100, baseline={"score": 0.86, "p99": 0.02}), fleet(100), "rollback", None,
     "2.00x stable 20.0 ms"),
    ("a source rolled back before is never rolled out again", entry(5),
     Status("rolled_back", CANARY, 0, NOW - 50, "x",
            rejected=[{"source": CANARY, "reason": "agreement", "at": "t"}]),
     fleet(5), "rollback", None, "was rolled back before (agreement)"),
    ("the percent changed by hand: the bake starts again", entry(25), baking(5), fleet(25),
     "step", 25.0, "changed to 25% by hand"),
]


@pytest.mark.parametrize(("case", "e", "status", "nodes", "action", "percent", "reason"),
                         CASES, ids=[c[0] for c in CASES])
def test_decide(case, e, status, nodes, action, percent, reason):
    got = decide(e, status, nodes, NOW)
    assert (got.action, got.percent) == (action, percent), got
    assert reason in got.reason, got.reason


def test_a_step_records_the_stable_figures_as_the_baseline():
    got = decide(entry(25), baking(25), fleet(25, stable_kw={"p99": 0.03}), NOW)
    assert got == Decision("step", got.reason, 100.0,
                           {"score": pytest.approx(0.86), "p99": pytest.approx(0.03),
                            "error_rate": 0.0})


def test_every_problem_is_named():
    got = decide(entry(5), baking(), fleet(5, canary_kw={"score": 0.5, "p99": 1.0}), NOW)
    assert got.action == "rollback"
    assert "min_score" in got.reason
    assert "max_drop" in got.reason
    assert "max_p99_ratio" in got.reason


def test_parse_entry_reads_the_rollout_policy_and_gates():
    e = parse_entry(MODEL, {
        "stable": {"source": STABLE}, "canary": {"source": CANARY, "percent": 5},
        "min_score": 0.8, "min_agreement": 0.9,
        "rollout": {"steps": [10, 50, 100], "bake_s": 60, "min_nodes": 1}})
    assert e.canary == CANARY
    assert e.percent == 5
    assert e.gates == Gates(0.8, None, 0.9)
    assert e.policy == RolloutPolicy((10.0, 50.0, 100.0), 60.0, 1, 1.5, 1.5)
    assert parse_entry(MODEL, {"stable": {"source": STABLE}}).policy == RolloutPolicy()


@pytest.mark.parametrize(("rollout", "message"), [
    ({"steps": [5, 25]}, "end in 100"),
    ({"steps": [25, 5, 100]}, "must increase"),
    ({"steps": []}, "expected a list"),
    ({"steps": [0, 100]}, "above 0"),
    ({"min_nodes": 0}, "min_nodes"),
    ({"bake_s": -1}, "bake_s"),
    ({"max_error_ratio": 0.5}, "max_error_ratio"),
    ({"max_p99_ratio": "x"}, "max_p99_ratio"),
    ({"step": [5, 100]}, "unknown keys"),
    ([5, 100], "expected a mapping"),
])
def test_bad_rollout_policies_name_the_key(rollout, message):
    with pytest.raises(ManifestError, match=f"models.defects.rollout.*{message}"):
        parse_entry(MODEL, {"stable": {"source": STABLE}, "rollout": rollout})
