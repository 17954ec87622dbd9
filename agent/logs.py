"""Logging to stderr: one line per event, JSON when stderr is not a terminal (journald, kubelet).

Lines are written by a thread of their own: a stderr that stops draining (a stuck pipe, a
full journal) must never block the event loop. When the writer falls that far behind, lines are
dropped, counted, and the count is written once it catches up.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import sys
import threading
import time
from typing import TextIO

from agent import strict_json

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


# Secrets that can ride along in a message (a URL's user:password, an Authorization value):
# masked in every line, whatever logged them.
_SECRETS = (
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@\"']*:)[^@\s/\"']+@", re.IGNORECASE), r"\1***@"),
    (re.compile(r"\b(Bearer|Basic|bearer)(\s+)[A-Za-z0-9._~+/=-]{6,}"), r"\1\2***"),
)


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return strict_json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and k[:1] != "_"}
        return line + ("  " + " ".join(f"{k}={v}" for k, v in extra.items()) if extra else "")


class BackgroundHandler(logging.Handler):
    """Formats (and masks secrets) on the caller's thread, CPU only; writes on its own thread,
    the part that can block."""

    def __init__(self, stream: TextIO, max_lines: int = 10_000) -> None:
        super().__init__()
        self._stream = stream
        self._lines: queue.Queue[str | None] = queue.Queue(max_lines)
        self.dropped = 0
        self._writer = threading.Thread(target=self._write, name="log-writer", daemon=True)
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = redact(self.format(record))
        except Exception:
            self.handleError(record)
            return
        try:
            self._lines.put_nowait(line)
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        reported = 0
        while (line := self._lines.get()) is not None:
            try:
                self._stream.write(line + "\n")
                if self.dropped > reported and self._lines.empty():
                    gone, reported = self.dropped - reported, self.dropped
                    self._stream.write(f"{gone} log lines dropped: stderr was not draining\n")
                self._stream.flush()
            except (OSError, ValueError):
                pass  # stderr gone: nothing better to do with a log line

    def close(self) -> None:
        """Write what is queued (up to 2 s: a stuck stderr must not hang the exit)."""
        if self._writer.is_alive():
            with contextlib.suppress(queue.Full):
                self._lines.put(None, timeout=2)
            self._writer.join(2)
        super().close()


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = BackgroundHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is one line per request: off unless log_requests says otherwise.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
