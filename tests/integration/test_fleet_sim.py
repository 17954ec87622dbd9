"""The simulated fleet of ``python -m benchmarks fleet-sim``, run as the benchmark runs it: 20
real agents (own node names and state dirs), a real Prometheus (file SD, the fleet rules), a
real OCI registry with 1.0.0, 1.1.0 and a broken 1.2.0, cameras on several nodes, ``/health``
polled on every node, and ``edge-agent fleet run``. On the way two nodes of the 25 % cohort are
cut off (one process stopped, one uplink unplugged in a network namespace) and the controller
is killed and started again. Asserts from the simulation's own figures, never from timings.
"""

from __future__ import annotations

import re
import shutil

import pytest
from support import require

from benchmarks.fleet_sim import SimResult, run_sim
from benchmarks.fleet_sim_parts import netns_problem

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimResult:
    require(shutil.which("prometheus") is not None, "prometheus (apt-get install prometheus)")
    require(shutil.which("docker-registry") is not None,
            "docker-registry (apt-get install docker-registry)")
    problem = netns_problem()
    require(problem is None, f"a network namespace ({problem})")
    work = tmp_path_factory.mktemp("fleet-sim")
    # Generous limits: CI is a busy 2-core machine; nothing below depends on how long it took.
    return run_sim(20, work / "run", limit_s=600, results=work / "results")


def test_the_good_version_is_stepped_5_25_100_and_promoted(sim: SimResult) -> None:
    assert sim.steps("1.1.0") == [5, 25, 100], sim.decisions
    assert sim.outcome("1.1.0") == "promote", sim.decisions
    assert "rollback" not in sim.actions("1.1.0")
    assert set(sim.final_versions.values()) == {"1.1.0"}, sim.final_versions
    assert len(sim.final_versions) == 20


def test_no_camera_request_failed_and_health_never_failed(sim: SimResult) -> None:
    answered = sum(sum(a.values()) for a in sim.camera_answers.values())
    assert answered > 100, sim.camera_answers
    assert sim.failed_requests() == 0, sim.camera_answers
    # Every node's cameras were answered, the cut-off ones included.
    assert sim.stopped_node in sim.camera_answers
    assert sim.uplink_node in sim.camera_answers
    assert all(a.get("200", 0) > 0 for a in sim.camera_answers.values()), sim.camera_answers
    assert sim.health_checks > 20 * 10
    assert sim.health_bad == []


def test_the_broken_version_is_rolled_back_at_its_first_step(sim: SimResult) -> None:
    assert sim.steps("1.2.0") == [5], sim.decisions
    assert sim.outcome("1.2.0") == "rollback", sim.decisions
    assert sim.most_nodes_on("1.2.0") <= len(sim.cohorts[5])
    assert "1.2.0" not in sim.final_versions.values()


def test_cut_off_nodes_keep_serving_and_catch_up(sim: SimResult) -> None:
    # The stopped process really could not answer, and nothing was sent to it meanwhile.
    assert sim.answered_while_stopped is False
    assert sim.skipped_while_stopped > 0
    assert sim.uplink_node is not None
    for node in (sim.stopped_node, sim.uplink_node):
        assert node in sim.cohorts[25]
        assert sim.caught_up(node, "1.1.0") is not None, (node, sim.changes)
    # Cut off, it said so (and so the controller did not count it as refusing the canary).
    assert sim.connected_while_cut == 0
    # The unplugged node served its cameras throughout, on the version it had.
    assert sim.camera_answers[sim.uplink_node].keys() == {"200"}


def test_the_restarted_controller_resumes_where_it_was(sim: SimResult) -> None:
    at_kill, after = sim.restart["at_kill"], sim.restart["after"]
    assert at_kill["phase"] == "canary", sim.restart
    assert at_kill["percent"] == 25, sim.restart
    first = sim.restart["first_line"]
    if after.get("percent") == 25:  # still baking: the same step, its bake not restarted
        assert after["since"] == at_kill["since"], sim.restart
        assert first.startswith("fusion: hold: baking at 25%"), first
    else:  # the bake ended while it was down: the next step, not the first one again
        assert first.startswith("fusion: step -> 100%"), first
    runs = [run for _, run, line in sim.decisions if "step -> " in line]
    assert runs.count(2) >= 1  # the 100% step (and 1.2.0's) came from the restarted one


def test_the_report_has_the_timeline(sim: SimResult) -> None:
    assert sim.report is not None
    text = sim.report.read_text()
    assert "## Versions per node" in text
    assert "## Nodes per version over time" in text
    for node in sim.nodes:  # each starts on 1.0.0, first seen when the busy poller got to it
        assert re.search(rf"^\| {re.escape(node)} \| \d+ s 1\.0\.0 \(stable\)", text, re.M), node
    if sim.plot is not None:  # matplotlib ('.[bench]') is optional
        assert sim.plot.read_bytes()[:4] == b"\x89PNG"
    else:
        assert "no plot: matplotlib is not installed" in text

