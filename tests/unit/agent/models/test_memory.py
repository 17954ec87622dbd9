"""Room for a second loaded version: MemAvailable and a cgroup v2 memory.max."""

from __future__ import annotations

from pathlib import Path

from agent.models.memory import FACTOR, available_bytes, room_for


def fake_node(root: Path, available_kb: int, cgroup_max: str | None, current: int = 0) -> tuple[
        Path, Path]:
    proc, cgroups = root / "proc", root / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemTotal: 99999999 kB\nMemAvailable: {available_kb} kB\n")
    (proc / "self" / "cgroup").write_text("0::/kubepods/pod1/agent\n")
    folder = cgroups / "kubepods" / "pod1" / "agent"
    folder.mkdir(parents=True)
    if cgroup_max is not None:
        (folder / "memory.max").write_text(cgroup_max + "\n")
        (folder / "memory.current").write_text(f"{current}\n")
    return proc, cgroups


def test_the_smaller_of_memavailable_and_the_cgroup_room_counts(tmp_path):
    proc, cgroups = fake_node(tmp_path / "a", 1000, "max")
    assert available_bytes(proc, cgroups) == 1000 * 1024
    proc, cgroups = fake_node(tmp_path / "b", 1000, str(600_000), current=100_000)
    assert available_bytes(proc, cgroups) == 500_000
    proc, cgroups = fake_node(tmp_path / "c", 100, str(600_000), current=100_000)
    assert available_bytes(proc, cgroups) == 100 * 1024


def test_a_model_needs_three_times_its_file(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x" * 100_000)
    proc, cgroups = fake_node(tmp_path / "a", 1000, str(FACTOR * 100_000 + 10), current=10)
    assert room_for(model, proc, cgroups) == (True, FACTOR * 100_000, FACTOR * 100_000)
    proc, cgroups = fake_node(tmp_path / "b", 1000, str(FACTOR * 100_000), current=10)
    assert room_for(model, proc, cgroups)[0] is False
