"""Log setup for every role: a level, text or JSON lines, and the request id of each line.

A pull crosses the mirror, the swarm and the peer client of one agent; grepping one
request id finds all of it. The id lives in a context variable, set by the mirror for
each request it answers (``observability.http``); asyncio copies the context into every
task a handler starts, so a download begun for a request logs that request's id even in
the swarm's and the peer client's tasks. Lines outside any request show ``-``.

JSON lines carry ``time`` (RFC 3339, UTC), ``level``, ``logger``, ``message``,
``request_id`` and, after a failure, ``exception``: what log shippers (Loki, Fluent Bit,
Elasticsearch) index without a parsing rule.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import secrets
import sys
import time
from typing import Literal

#: the id of the request this code runs for, or "" outside one
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("shoal_request_id", default="")

#: environment override of the configured level (``SHOAL_LOG=debug``), for a quick look
LEVEL_ENV = "SHOAL_LOG"

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def new_request_id() -> str:
    """16 hex digits: unique enough to grep, short enough to read."""
    return secrets.token_hex(8)


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(
    level: str = "info",
    fmt: Literal["text", "json"] = "text",
    *,
    stream: object = None,
) -> logging.Handler:
    """Send shoal's log to stderr (or ``stream``) at ``level`` in ``fmt``; replaces any
    handler set before, so a second call (a test, a reload) does not double lines."""
    name = os.environ.get(LEVEL_ENV, "") or level
    numeric = logging.getLevelName(name.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    handler = logging.StreamHandler(stream or sys.stderr)  # type: ignore[arg-type]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    # one line per HTTP request is the audit log's job, not the process log's
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler
