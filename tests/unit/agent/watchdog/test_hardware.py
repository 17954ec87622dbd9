"""The hardware watchdog feeding protocol against a FIFO and a pty (no /dev/watchdog here; a
real softdog is exercised in qemu by the integration tests)."""

from __future__ import annotations

import os
import pty
import select
from pathlib import Path

import pytest
from support import FifoReader

from agent.watchdog.hardware import FEED, MAGIC_CLOSE, HardwareWatchdog, WatchdogUnavailableError


def fifo_dog(tmp_path: Path) -> tuple[HardwareWatchdog, FifoReader]:
    reader = FifoReader(tmp_path / "watchdog")
    dog = HardwareWatchdog(reader.path, timeout_s=10)
    dog.open()
    return dog, reader


def test_feeds_then_magic_close_on_a_clean_stop(tmp_path):
    dog, reader = fifo_dog(tmp_path)  # the ioctl answers ENOTTY on a FIFO: logged, not fatal
    assert dog.effective_timeout_s is None
    for _ in range(3):
        dog.feed()
    dog.close_cleanly()
    reader.join(5)
    assert reader.data == FEED * 3 + MAGIC_CLOSE
    assert MAGIC_CLOSE not in FEED


def test_an_unclean_stop_never_writes_the_magic_byte(tmp_path):
    dog, reader = fifo_dog(tmp_path)
    dog.feed()
    dog.abandon()
    dog.feed()  # after close: nothing, no error
    reader.join(5)
    assert reader.data == FEED


def test_pty_stands_in_for_the_device(tmp_path):
    controller, device = pty.openpty()
    path = os.ttyname(device)
    dog = HardwareWatchdog(Path(path), timeout_s=5)
    dog.open()
    dog.feed()
    dog.close_cleanly()
    # The pty hands bytes over as its line discipline gets to them: collect until both came.
    got = b""
    while len(got) < len(FEED + MAGIC_CLOSE) and select.select([controller], [], [], 5)[0]:
        got += os.read(controller, 64)
    os.close(controller)
    os.close(device)
    assert got == FEED + MAGIC_CLOSE


def test_a_device_that_cannot_be_opened_is_a_clear_error(tmp_path):
    dog = HardwareWatchdog(tmp_path / "missing", timeout_s=10)
    with pytest.raises(WatchdogUnavailableError, match="cannot open the hardware watchdog"):
        dog.open()
