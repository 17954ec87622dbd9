"""The supervisor's messages, tick by tick, with a recording notifier and a FIFO watchdog."""

from __future__ import annotations

import asyncio
import os

from support import FifoReader

from agent.health import Liveness
from agent.watchdog.hardware import HardwareWatchdog
from agent.watchdog.supervisor import State, Supervisor, systemd_watchdog_period

LIVE = Liveness(True, 0.0, 0.0, ())
DEAD = Liveness(False, 5.0, 0.0, ("event loop lag 5.000s > 2.0s",))


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def notify(self, state: str) -> None:
        self.sent.append(state)


def test_messages_follow_the_state_and_pings_only_while_live():
    state = {"s": State(False, "loading: m pending")}
    live = {"l": LIVE}
    rec = Recorder()
    sup = Supervisor(lambda: live["l"], lambda: state["s"], tick_s=1, extend_timeout_s=120,
                     notifier=rec)  # type: ignore[arg-type]
    sup.tick()
    assert rec.sent[-1] == "STATUS=loading: m pending\nEXTEND_TIMEOUT_USEC=120000000\nWATCHDOG=1"
    state["s"] = State(True, "serving m")
    sup.tick()
    assert rec.sent[-1] == "STATUS=serving m\nREADY=1\nWATCHDOG=1"
    sup.tick()
    assert rec.sent[-1] == "WATCHDOG=1"  # nothing changed: just the ping
    live["l"] = DEAD
    sup.tick()
    assert len(rec.sent) == 3  # not live: nothing at all is sent
    live["l"] = LIVE
    state["s"] = State(True, "draining", stopping=True)
    sup.tick()
    assert rec.sent[-1] == "STATUS=draining\nSTOPPING=1\nWATCHDOG=1"
    assert sum(m.endswith("WATCHDOG=1") for m in rec.sent) == 4


def test_systemd_period_is_half_of_watchdog_usec_for_this_pid_only():
    assert systemd_watchdog_period({"WATCHDOG_USEC": "30000000"}) == 15.0
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert systemd_watchdog_period(mine) == 1.0
    assert systemd_watchdog_period({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert systemd_watchdog_period({}) is None
    assert systemd_watchdog_period({"WATCHDOG_USEC": "soon"}) is None


async def test_hardware_fed_while_live_and_left_armed_after_an_unclean_stop(tmp_path):
    reader = FifoReader(tmp_path / "dog")
    live = {"l": LIVE}
    sup = Supervisor(lambda: live["l"], lambda: State(True, "ok"), tick_s=3600,
                     extend_timeout_s=1, hardware=HardwareWatchdog(reader.path, 10),
                     notifier=Recorder())  # type: ignore[arg-type]
    sup.start()  # opens the device
    await asyncio.sleep(0.01)  # its loop's first tick
    sup.tick()
    live["l"] = DEAD
    sup.tick()
    await sup.stop(clean=False)
    reader.join(5)
    assert reader.data == b"kk"  # two feeds while live, none while dead, no magic "V"
