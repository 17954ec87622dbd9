"""The manifest as the controller edits it (pure), and the file store's compare-and-swap."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import yaml

from agent.fleet.manifest_doc import FleetManifest, iso
from agent.fleet.manifest_store import (
    ConfigMapStore,
    ConflictError,
    FileStore,
    StoreError,
    UrlStore,
    open_store,
)
from agent.fleet.policy import Decision
from agent.models.manifest import ManifestError, parse_manifest

T0 = 1_800_000_000.0
TEXT = """\
models:
  defects:
    stable: {source: "file:///share/defects/1.1.0/model.json"}
    canary: {source: "file:///share/defects/1.2.0/model.json", percent: 5}
    min_score: 0.8
    rollout: {steps: [5, 25, 100], bake_s: 600, min_nodes: 1}
  fusion:
    stable: {source: "file:///share/fusion/model.json"}
"""
CANARY = "file:///share/defects/1.2.0/model.json"


def test_a_step_sets_the_percent_and_the_status_and_nodes_still_read_it():
    m = FleetManifest(TEXT)
    m.apply("defects", Decision("step", "healthy", 25.0, {"score": 0.86}), T0)
    text = m.render()
    doc = yaml.safe_load(text)
    assert doc["models"]["defects"]["canary"] == {"source": CANARY, "percent": 25}
    assert doc["status"]["defects"] == {"phase": "canary", "source": CANARY, "percent": 25,
                                        "since": iso(T0), "reason": "healthy",
                                        "baseline": {"score": 0.86}}
    assert "fusion" not in doc["status"]
    assert parse_manifest(text)["defects"].canary.percent == 25  # a node reads it
    again = FleetManifest(text)  # and so does the controller after a restart
    assert again.status["defects"].since == T0
    assert again.status["defects"].percent == 25
    assert again.status["defects"].baseline == {"score": 0.86}


def test_promotion_makes_the_canary_stable():
    m = FleetManifest(TEXT)
    m.apply("defects", Decision("promote", "healthy at 100%", 100.0), T0)
    doc = yaml.safe_load(m.render())
    assert doc["models"]["defects"]["stable"] == {"source": CANARY}
    assert "canary" not in doc["models"]["defects"]
    assert doc["status"]["defects"]["phase"] == "stable"
    assert doc["models"]["defects"]["rollout"]["steps"] == [5, 25, 100]  # the policy stays


def test_a_rollback_removes_the_canary_and_remembers_why_once():
    m = FleetManifest(TEXT)
    m.apply("defects", Decision("rollback", "n1 scores 0.5"), T0)
    doc = yaml.safe_load(m.render())
    assert "canary" not in doc["models"]["defects"]
    assert doc["models"]["defects"]["stable"]["source"].endswith("1.1.0/model.json")
    st = doc["status"]["defects"]
    assert st["phase"] == "rolled_back"
    assert st["rejected"] == [{"source": CANARY, "reason": "n1 scores 0.5", "at": iso(T0)}]
    # Someone puts it back: rolled back again, listed once.
    doc["models"]["defects"]["canary"] = {"source": CANARY, "percent": 5}
    again = FleetManifest(yaml.safe_dump(doc))
    again.apply("defects", Decision("rollback", "was rolled back before"), T0 + 5)
    assert len(yaml.safe_load(again.render())["status"]["defects"]["rejected"]) == 1


def test_a_hold_changes_nothing_and_a_canary_removed_by_hand_ends_the_rollout_once():
    m = FleetManifest(TEXT)
    before = m.copy().doc
    m.apply("defects", Decision("hold", "baking", 5.0), T0)
    assert m.doc == before
    m.apply("defects", Decision("step", "starts", 5.0), T0)
    del m.doc["models"]["defects"]["canary"]
    by_hand = FleetManifest(m.render())
    by_hand.apply("defects", Decision("hold", "no canary"), T0 + 60)
    assert by_hand.status["defects"].phase == "stable"
    assert "by hand" in by_hand.status["defects"].reason
    settled = FleetManifest(by_hand.render())
    snapshot = settled.copy().doc
    settled.apply("defects", Decision("hold", "no canary"), T0 + 120)
    assert settled.doc == snapshot


@pytest.mark.parametrize(("extra", "message"), [
    ("status: [1]", "status: expected a mapping"),
    ("status: {defects: {phase: baking}}", "status.defects.phase"),
    ("status: {defects: {phase: canary, since: yesterday}}", "status.defects.since"),
    ("status: {defects: {rejected: {a: 1}}}", "status.defects.rejected"),
])
def test_a_bad_status_is_refused_with_its_key(extra, message):
    with pytest.raises(ManifestError, match=message):
        FleetManifest(TEXT + extra + "\n")


def test_what_a_node_refuses_the_controller_refuses():
    with pytest.raises(ManifestError, match="unknown keys"):
        FleetManifest(TEXT.replace("min_score", "min_scor"))


def test_the_file_store_writes_atomically_and_refuses_a_stale_write(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(TEXT)
    store = open_store(path.as_uri())
    assert isinstance(store, FileStore)
    first = store.read()
    store.write(TEXT + "# one\n", first.version)
    assert path.read_text().endswith("# one\n")
    with pytest.raises(ConflictError, match="changed since it was read"):
        store.write(TEXT + "# two\n", first.version)  # another writer came in between
    assert path.read_text().endswith("# one\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.yaml", "fleet.yaml.lock"]


def test_two_controllers_writing_at_once_one_wins(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(TEXT)
    read = FileStore(path).read()
    results: list[str] = []

    def write(tag: str) -> None:
        try:
            FileStore(path).write(TEXT + f"# {tag}\n", read.version)
            results.append("won")
        except ConflictError:
            results.append("lost")

    threads = [threading.Thread(target=write, args=(str(i),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 7 + ["won"]


def test_store_locations():
    assert isinstance(open_store("/etc/edge/fleet.yaml"), FileStore)
    assert isinstance(open_store("https://config.factory/fleet.yaml"), UrlStore)
    cm = open_store("configmap://edge-agent/fleet")
    assert isinstance(cm, ConfigMapStore)
    assert (cm.namespace, cm.name, cm.key) == ("edge-agent", "fleet", "fleet.yaml")
    with pytest.raises(StoreError, match="configmap://NAMESPACE/NAME"):
        open_store("configmap://edge-agent")
    with pytest.raises(StoreError, match="must be a path or start with"):
        open_store("s3://bucket/fleet.yaml")
    with pytest.raises(StoreError, match="cannot read"):
        open_store("/nonexistent/fleet.yaml").read()


def test_the_readme_rollout_example_is_what_the_controller_and_a_node_read():
    readme = (Path(__file__).parents[4] / "README.md").read_text()
    section = readme.split("\n## Rolling out a model to the fleet\n", 1)[1]
    text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    m = FleetManifest(text)
    defects = m.entries["defects"]
    assert defects.policy.steps == (5.0, 25.0, 100.0)
    assert defects.policy.min_nodes == 3
    assert defects.gates.min_agreement == 0.9
    assert m.status["defects"].phase == "canary"
    assert m.status["defects"].since == 1_796_119_200.0  # 2026-12-01T10:00:00Z
    assert parse_manifest(text)["defects"].canary is not None
