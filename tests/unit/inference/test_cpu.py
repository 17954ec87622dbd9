from __future__ import annotations

import os
import threading

from support import TINY_MODEL

from inference.cpu import lower_thread_priority, usable_cores
from inference.session import SessionConfig, create_session


def test_cgroup_v2_quota_caps_the_cores(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cores(tmp_path) == min(2, len(os.sched_getaffinity(0)))


def test_cgroup_v2_unlimited_uses_the_affinity_mask(tmp_path):
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cores(tmp_path) == len(os.sched_getaffinity(0))


def test_cgroup_v1_quota(tmp_path):
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(tmp_path) == 1


def test_no_cgroup_files(tmp_path):
    assert usable_cores(tmp_path) == len(os.sched_getaffinity(0))


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def _tasks() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_lower_thread_priority_lowers_the_calling_thread_and_what_it_starts():
    base = _nice(threading.get_native_id())
    seen: dict[str, int] = {}

    def worker() -> None:
        lower_thread_priority(3)
        seen["worker"] = _nice(threading.get_native_id())
        child = threading.Thread(target=lambda: seen.update(child=_nice(threading.get_native_id())))
        child.start()
        child.join()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"worker": min(19, base + 3), "child": min(19, base + 3)}
    assert _nice(threading.get_native_id()) == base  # the caller's own thread is untouched


def test_onnx_runtime_pool_threads_inherit_the_creating_threads_priority():
    # Why load_version creates each session on its (lowered) inference thread: ORT starts its
    # intra-op pool threads there, and they must not outrank the event loop either.
    base = _nice(threading.get_native_id())
    before = _tasks()
    made: list[object] = []

    def create() -> None:
        lower_thread_priority(4)
        made.append(create_session(TINY_MODEL, SessionConfig(providers=("cpu",),
                                                             intra_op_threads=2)))

    t = threading.Thread(target=create)
    t.start()
    t.join()
    pool = _tasks() - before
    assert pool, "ORT started no pool thread for intra_op_threads=2"
    assert {_nice(tid) for tid in pool} == {min(19, base + 4)}


def test_lower_thread_priority_by_zero_changes_nothing():
    base = _nice(threading.get_native_id())
    lower_thread_priority(0)
    assert _nice(threading.get_native_id()) == base
