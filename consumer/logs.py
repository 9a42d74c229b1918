"""Logging set-up: one JSON object per line for log collectors, readable lines on a terminal.

Call sites add structured fields with ``extra``; they become keys of the JSON line (and stay
out of the readable line, whose message already says the same in words)::

    log.info("partitions assigned: %s", tps, extra={"event": "assign", "partitions": tps})

Examples
--------
>>> import io
>>> out = io.StringIO()
>>> setup_logging("INFO", "json", stream=out)
>>> logging.getLogger("freshrec.doc").info("hello %s", "you", extra={"event": "greet"})
>>> line = json.loads(out.getvalue())
>>> line["level"], line["logger"], line["message"], line["event"]
('INFO', 'freshrec.doc', 'hello you', 'greet')
>>> setup_logging("WARNING", "text", stream=io.StringIO())
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import IO, Any

__all__ = ["LOG_FORMATS", "JsonFormatter", "LogSampler", "json_logging", "setup_logging"]

LOG_FORMATS = ("auto", "json", "text")

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# Loggers of libraries that are chatty below WARNING. kafka-python's DEBUG lines include one
# that prints a client's whole configuration, SASL password included.
_QUIET = ("kafka", "faiss", "urllib3", "filelock")

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_HANDLER_NAME = "freshrec"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (UTC, ISO 8601, ms), ``level``, ``logger``,
    ``message``, the record's ``extra`` fields, and ``exc`` (the traceback) on errors.

    Values JSON cannot hold are written with ``str`` (a ``Secret`` prints masked).

    Examples
    --------
    >>> rec = logging.LogRecord("freshrec", logging.ERROR, "f.py", 1, "boom %d", (1,), None)
    >>> rec.created = 0.0
    >>> rec.partitions = [0, 1]
    >>> JsonFormatter().format(rec)
    '{"ts": "1970-01-01T00:00:00.000Z", "level": "ERROR", "logger": "freshrec", \
"message": "boom 1", "partitions": [0, 1]}'
    """

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "ts": stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def setup_logging(level: str = "INFO", fmt: str = "auto", stream: IO[str] | None = None) -> None:
    """Send every logger's records at ``level`` and above to ``stream`` (stderr).

    ``fmt`` is ``json``, ``text``, or ``auto``: text when the stream is a terminal, JSON
    otherwise (a container, a systemd journal, a file). Replaces the handler an earlier call
    added, so a command may call it again with what its settings say.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {fmt!r}")
    if fmt == "auto":
        fmt = "text" if _is_tty(sys.stderr if stream is None else stream) else "json"
    handler = _StderrHandler() if stream is None else logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(_TEXT_FORMAT))
    handler.set_name(_HANDLER_NAME)
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; others' handlers stay
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record, not the one it was
    created with: an embedding program (a test runner, say) may swap and close stderr."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        pass  # always sys.stderr


def json_logging() -> bool:
    """Whether :func:`setup_logging` last chose JSON lines (so that a command's final error
    goes to the log collector as JSON too, not only as a plain line)."""
    return any(
        h.get_name() == _HANDLER_NAME and isinstance(h.formatter, JsonFormatter)
        for h in logging.getLogger().handlers
    )


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class LogSampler:
    """Lets the first record of each key through, then at most one per ``interval_s``, and
    says how many were held back in between: a flood of bad records logs a few lines per
    reason, while the metrics count every one.

    Examples
    --------
    >>> now = [0.0]
    >>> s = LogSampler(10.0, clock=lambda: now[0])
    >>> s.admit("not_msgpack"), s.admit("not_msgpack"), s.admit("bad_type")
    (0, None, 0)
    >>> now[0] = 11.0
    >>> s.admit("not_msgpack")  # one was held back since the last line
    1
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> int | None:
        """None if this record should not be logged; else how many of ``key`` were held back
        since the last one logged."""
        now = self._clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval_s:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)
