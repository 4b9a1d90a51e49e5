"""Logging set-up, called only from entry points: one event per line, JSON or text.

JSON is the default when stderr is not a terminal (journald, containers); records carry ``event``,
``timer_id`` and other extras as top-level keys so they can be filtered without parsing messages.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
#: One encoder for every line: ``json.dumps`` with a ``default`` builds a new encoder per call.
_encode = json.JSONEncoder(default=str, ensure_ascii=False).encode


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and every ``extra`` field."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key[0] != "_":
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return _encode(entry)


def setup_logging(fmt: str | None = None, level: str = "INFO") -> None:
    """Configure the root logger once for a daemon or command (``fmt``: json, text, or None for auto)."""
    if fmt is None:
        fmt = "text" if sys.stderr.isatty() else "json"
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be json or text, got {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Neither format shows the caller's file and line, thread or process: skip finding them for every
    # record (the stack walk alone cost a quarter of a line's 16 us, and a runner logs every delivery).
    logging._srcfile = None  # the switch logging documents in its source: "will prevent findCaller()"
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "httpx", "httpcore", "pymongo"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
