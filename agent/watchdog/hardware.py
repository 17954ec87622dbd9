"""Feeding a Linux hardware watchdog (``/dev/watchdog``-style device).

Protocol (Documentation/watchdog/watchdog-api.rst): opening the device starts the timer; any
write feeds it; ``WDIOC_SETTIMEOUT`` sets the timeout where the driver allows; writing ``V``
just before close disarms it ("magic close"). Closing without ``V`` leaves the timer running,
so a crash or a kill reboots the board once the timeout passes. We write ``V`` only on a clean
stop, never when the daemon is wedged or dying.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from pathlib import Path

from inference.errors import EdgeError

log = logging.getLogger(__name__)


class WatchdogUnavailableError(EdgeError):
    """The configured watchdog device cannot be opened: refusing to run unwatched."""


WDIOC_SETTIMEOUT = 0xC0045706  # _IOWR('W', 6, int)
FEED = b"k"  # any byte but "V"
MAGIC_CLOSE = b"V"


class HardwareWatchdog:
    def __init__(self, path: Path, timeout_s: int) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self._fd: int | None = None
        self.effective_timeout_s: int | None = None  # what the driver answered, if it did

    def open(self) -> None:
        """Open (this arms the timer) and ask for our timeout; drivers may refuse or round it."""
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as exc:  # EBUSY: another feeder holds it; EACCES: udev rule missing
            raise WatchdogUnavailableError(
                f"cannot open the hardware watchdog {self.path}: {exc.strerror}",
                {"path": str(self.path)},
            ) from exc
        try:
            answer = fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", self.timeout_s))
            self.effective_timeout_s = struct.unpack("i", answer)[0]
        except OSError as exc:  # ENOTTY: not a watchdog driver (a FIFO in tests), EINVAL: range
            log.warning(
                "watchdog timeout not set",
                extra={"path": str(self.path), "error": errno.errorcode.get(exc.errno or 0, "")},
            )
        log.info(
            "hardware watchdog armed",
            extra={"path": str(self.path), "timeout_s": self.effective_timeout_s},
        )

    def feed(self) -> None:
        if self._fd is not None:
            os.write(self._fd, FEED)

    def close_cleanly(self) -> None:
        """Disarm with the magic close: only on a clean, deliberate stop."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, MAGIC_CLOSE)
        finally:
            os.close(self._fd)
            self._fd = None
        log.info("hardware watchdog disarmed (magic close)")

    def abandon(self) -> None:
        """Close without the magic byte: the timer keeps running and the board reboots unless
        something feeds it again. For stops that are not clean (a wedge detected at exit)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
