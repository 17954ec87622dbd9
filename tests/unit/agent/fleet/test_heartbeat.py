import os
import time

from agent.fleet import heartbeat


def test_no_beat_yet_is_not_alive_and_says_so(tmp_path):
    path = tmp_path / "heartbeat"
    assert heartbeat.age_s(path) is None
    ok, why = heartbeat.check(path, 600)
    assert not ok
    assert "does not exist" in why


def test_a_beat_is_fresh_then_grows_old(tmp_path):
    path = tmp_path / "heartbeat"
    heartbeat.beat(path)
    ok, why = heartbeat.check(path, 600)
    assert ok, why
    old = time.time() - 601
    os.utime(path, (old, old))
    ok, why = heartbeat.check(path, 600)
    assert not ok
    assert "more than 600 s" in why
    heartbeat.beat(path)  # the next pass: fresh again
    assert heartbeat.check(path, 600)[0]
    age = heartbeat.age_s(path, now=time.time() + 30)
    assert age is not None
    assert 29 <= age <= 31
