"""Room for a second loaded version: MemAvailable, a cgroup v2 memory.max or a cgroup v1
memory.limit_in_bytes (the cgroup files are written into a temporary tree: the kernel's own
are whatever this machine has)."""

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


def fake_v1_node(root: Path, available_kb: int, limit: int, usage: int,
                 namespaced: bool = False) -> tuple[Path, Path]:
    """A cgroup v1 node; ``namespaced``: the memory mount is the container's own cgroup (its
    path in /proc/self/cgroup does not exist under the mount)."""
    proc, cgroups = root / "proc", root / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(f"MemAvailable: {available_kb} kB\n")
    (proc / "self" / "cgroup").write_text(
        "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n0::/\n")
    folder = cgroups / "memory" if namespaced else cgroups / "memory" / "docker" / "abc"
    folder.mkdir(parents=True)
    (folder / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (folder / "memory.usage_in_bytes").write_text(f"{usage}\n")
    return proc, cgroups


def test_the_smaller_of_memavailable_and_the_cgroup_room_counts(tmp_path):
    proc, cgroups = fake_node(tmp_path / "a", 1000, "max")
    assert available_bytes(proc, cgroups) == 1000 * 1024
    proc, cgroups = fake_node(tmp_path / "b", 1000, str(600_000), current=100_000)
    assert available_bytes(proc, cgroups) == 500_000
    proc, cgroups = fake_node(tmp_path / "c", 100, str(600_000), current=100_000)
    assert available_bytes(proc, cgroups) == 100 * 1024


def test_a_cgroup_v1_limit_counts_and_its_no_limit_value_does_not(tmp_path):
    proc, cgroups = fake_v1_node(tmp_path / "a", 1000, limit=600_000, usage=200_000)
    assert available_bytes(proc, cgroups) == 400_000
    proc, cgroups = fake_v1_node(tmp_path / "b", 1000, limit=9223372036854771712, usage=5)
    assert available_bytes(proc, cgroups) == 1000 * 1024
    proc, cgroups = fake_v1_node(tmp_path / "c", 1000, limit=300_000, usage=100_000,
                                 namespaced=True)
    assert available_bytes(proc, cgroups) == 200_000


def test_a_model_needs_three_times_its_file_per_session_and_the_free_memory_kept(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"x" * 100_000)
    proc, cgroups = fake_node(tmp_path / "a", 1000, str(FACTOR * 100_000 + 10), current=10)
    assert room_for(model, proc=proc, cgroup_root=cgroups) == (
        True, FACTOR * 100_000, FACTOR * 100_000)
    proc, cgroups = fake_node(tmp_path / "b", 1000, str(FACTOR * 100_000), current=10)
    assert room_for(model, proc=proc, cgroup_root=cgroups)[0] is False
    proc, cgroups = fake_node(tmp_path / "c", 10_000, str(10 * FACTOR * 100_000))
    assert room_for(model, sessions=2, proc=proc, cgroup_root=cgroups)[0] is True
    assert room_for(model, sessions=2, min_free_bytes=5_000_000, proc=proc,
                    cgroup_root=cgroups) == (False, 2 * FACTOR * 100_000 + 5_000_000,
                                             10 * FACTOR * 100_000)
