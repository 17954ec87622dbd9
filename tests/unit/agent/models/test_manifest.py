"""The fleet manifest and the canary cohort rule."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.models.manifest import ManifestError, in_canary, parse_manifest

MANIFEST = """
models:
  defects:
    stable: {source: "https://models/defects/1.1.0/model.json"}
    canary: {source: "oci://registry:5000/models/defects:1.2.0", percent: 5}
    min_score: 0.8
    max_drop: 0.02
  fusion:
    stable: {source: "file:///models/fusion/model.json"}
"""


@pytest.mark.parametrize("percent", [0, 1, 5, 10, 50, 100])
def test_the_cohort_over_1000_node_names_is_within_one_of_the_percentage(percent):
    nodes = [f"line{i // 50}-node{i:04d}" for i in range(1000)]
    chosen = sum(in_canary(n, "defects", percent) for n in nodes)
    assert abs(chosen / 10 - percent) <= 1, chosen


def test_the_cohort_is_the_design_hash_rule_and_differs_between_models():
    name = "line3-node0042"
    bucket = int(hashlib.sha256(f"{name}/defects".encode()).hexdigest()[:8], 16) % 100
    assert in_canary(name, "defects", bucket + 1)
    assert not in_canary(name, "defects", bucket)
    nodes = [f"n{i}" for i in range(1000)]
    a = {n for n in nodes if in_canary(n, "defects", 10)}
    b = {n for n in nodes if in_canary(n, "fusion", 10)}
    assert a != b


def test_plans_choose_canary_or_stable_per_node():
    plans = parse_manifest(MANIFEST)
    defects = plans["defects"]
    assert (defects.min_score, defects.max_drop, defects.require_golden) == (0.8, 0.02, False)
    strict = parse_manifest("models: {m: {stable: {source: 'file:///x'}, require_golden: true}}")
    assert strict["m"].require_golden is True
    nodes = [f"n{i}" for i in range(400)]
    inside = next(n for n in nodes if in_canary(n, "defects", 5))
    outside = next(n for n in nodes if not in_canary(n, "defects", 5))
    assert defects.choose(inside)[1] == "canary"
    assert defects.choose(inside)[0].source.startswith("oci://")
    assert defects.choose(outside)[1] == "stable"
    assert plans["fusion"].choose(inside)[1] == "stable"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [1]", "'models' mapping"),
        ("{", "not valid YAML"),
        ("models: {m: {stable: {source: 'ftp://x'}}}", "models.m.stable.source"),
        ("models: {m: {stable: {source: 'file:///x'}, canary: {source: 'file:///y'}}}",
         "models.m.canary.percent"),
        ("models: {m: {stable: {source: 'file:///x'}, min_score: 2}}", "models.m.min_score"),
        ("models: {m: {stable: {source: 'file:///x'}, colour: red}}", "unknown keys"),
        ("models: {m: {stable: {source: 'file:///x'}, require_golden: 'yes'}}",
         "models.m.require_golden: must be true or false"),
        ("models: {m: {stable: {source: 'file:///x'}, min_agreement: 1.5}}",
         "models.m.min_agreement"),
        ("models: {m: {stable: {source: 'file:///x'}, bake_s: -1}}", "models.m.bake_s"),
        ("models: {m: {stable: {source: 'file:///x'}, min_samples: 0}}", "models.m.min_samples"),
        ("models: {m: {stable: {source: 'file:///x'}, shadow: {percent: 101}}}",
         "models.m.shadow.percent"),
        ("models: {m: {stable: {source: 'file:///x'}, shadow: {max_per_s: 0}}}",
         "models.m.shadow.max_per_s"),
        ("models: {m: {stable: {source: 'file:///x'}, shadow: {rate: 3}}}", "models.m.shadow"),
        ("models: {m: {stable: {source: 'file:///x'}, shadow: {before_swap_s: -1}}}",
         "models.m.shadow.before_swap_s"),
    ],
)
def test_bad_manifests_name_the_entry(text, message):
    with pytest.raises(ManifestError, match=message.replace("[", r"\[")):
        parse_manifest(text)


def test_the_readme_fleet_manifest_example_is_valid():
    readme = (Path(__file__).parents[4] / "README.md").read_text()
    section = readme.split("\n## Model lifecycle\n", 1)[1]
    plans = parse_manifest(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert plans["defects"].canary is not None
    assert plans["defects"].canary.percent == 5


def test_bake_and_shadow_are_off_by_default_and_read_with_their_defaults():
    off = parse_manifest(MANIFEST)["defects"].bake
    assert (off.bake_s, off.min_agreement, off.shadow.before_swap_s) == (0.0, None, 0.0)
    plan = parse_manifest(
        "models: {m: {stable: {source: 'file:///x'}, min_score: 0.7, bake_s: 30, "
        "min_agreement: 0.9, shadow: {percent: 50}}}")["m"]
    bake = plan.bake
    assert (bake.bake_s, bake.min_agreement, bake.min_samples, bake.min_score) == \
        (30.0, 0.9, 20, 0.7)
    assert (bake.shadow.percent, bake.shadow.max_per_s, bake.shadow.before_swap_s) == \
        (50.0, 2.0, 0.0)
    trial = parse_manifest("models: {m: {stable: {source: 'file:///x'}, "
                           "shadow: {before_swap_s: 120}}}")["m"].bake
    assert (trial.bake_s, trial.shadow.before_swap_s) == (0.0, 120.0)


def test_a_node_accepts_the_controllers_rollout_and_status_and_ignores_them():
    """The fleet controller adds ``rollout`` to a model and a top-level ``status``: a node
    reads neither (however they look), and still refuses other unknown keys."""
    text = """
models:
  defects:
    stable: {source: "https://models/defects/1.1.0/model.json"}
    canary: {source: "oci://registry:5000/models/defects:1.2.0", percent: 25}
    min_score: 0.8
    rollout: {steps: [5, 25, 100], bake_s: 1800, min_nodes: 3, max_error_ratio: 1.5,
              max_p99_ratio: 1.5}
status:
  defects: {phase: canary, percent: 25, since: "2026-12-01T10:00:00Z", reason: "x",
            anything: [1, 2]}
"""
    plans = parse_manifest(text)
    assert set(plans) == {"defects"}
    assert plans["defects"].canary is not None
    assert plans["defects"].canary.percent == 25
    assert plans == parse_manifest(text.replace("status:", "ignored_by_nodes:"))
    with pytest.raises(ManifestError, match="unknown keys"):
        parse_manifest(text.replace("rollout:", "rolout:"))
