"""Logging for operators: which logger each part uses, the fields every line about a work item
carries, a JSON formatter, and one call that configures both formats.

Loggers, one per part: `dtrio.engine` (dispatchers, the engine root), `dtrio.backend` (stores and
their schema), `dtrio.grpc` (the sidecar), `dtrio.orchestrator.<name>` (orchestrators'
`ctx.logger`, which never logs while replaying). INFO is the lifecycle of engines and
instances; DEBUG is per step and per activity. The libraries' loggers (grpclib, h2, hpack,
asyncio, ...) have a level of their own in `configure_logging`: hpack, at DEBUG, dumps headers
(withheld altogether once a sidecar requires a token: they would show it).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from opentelemetry import trace

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

# Record attributes that lines about a work item carry (see `work_item`); JSON shows them as fields.
FIELDS = ("work_item", "instance_id", "orchestration", "task_id")


def work_item(kind: str, instance_id: str, **more: Any) -> dict[str, Any]:
    """`extra=` for a line about one work item ("orchestration", "activity" or "entity")."""
    return {"work_item": kind, "instance_id": instance_id, **more}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC), level, logger, message, the work-item fields when
    present, the current trace and span IDs when a span is recording, and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            line["trace_id"] = f"{span.trace_id:032x}"
            line["span_id"] = f"{span.span_id:016x}"
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler `configure_logging` installed, so that calling it again replaces it."""


def configure_logging(
    level: int | str = "INFO", fmt: str = "text", stream: IO[str] | None = None,
    *, others: int | str | None = None,
) -> logging.Handler:
    """Log dtrio's records (the `dtrio` logger and those under it) at `level` and above, and
    every other logger's (the libraries': grpclib, h2, hpack, asyncio, ...) at `others` and
    above, by default WARNING or `level` when that is higher, to `stream` (stderr), as `fmt`
    "text" or "json" lines. What `python -m dtrio serve --log-level ... --library-log-level ...
    --log-format ...` calls; an application that configures logging itself does not need it."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    own = _level(level)
    root = logging.getLogger()
    root.setLevel(max(own, logging.WARNING) if others is None else _level(others))
    logging.getLogger("dtrio").setLevel(own)
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    return handler


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"not a log level: {level!r}")
    return value


class _AsDebug(logging.Filter):
    """Passes its logger's records up to `up_to` on as DEBUG ones, dropped unless the logger is
    on at DEBUG."""

    def __init__(self, up_to: int) -> None:
        super().__init__()
        self.up_to = up_to

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > self.up_to or record.levelno <= logging.DEBUG:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def as_debug(name: str, up_to: int = logging.INFO) -> None:
    """From now on the logger `name` logs its lines up to level `up_to` at DEBUG (once is
    enough: calling this again changes nothing). For a library whose lines at those levels are
    about nothing out of the ordinary, or that dtrio reports itself in fewer words."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, _AsDebug) for f in logger.filters):
        logger.addFilter(_AsDebug(up_to))


# hpack's loggers: at DEBUG they show every header as it arrives, credentials included, and
# Huffman-coded at times, so that no search for the secret's text could hide it.
HEADER_LOGGERS = ("hpack.hpack", "hpack.table")


class _Withhold(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def withhold_header_dumps() -> None:
    """From now on hpack logs nothing (once is enough): for a server whose clients send a
    secret in a header."""
    for name in HEADER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Withhold) for f in logger.filters):
            logger.addFilter(_Withhold())
