"""Log lines for machines: one JSON object per line, with the run id on every record.

Text logs suit a person at a terminal; a fleet's log pipeline (Loki, Elasticsearch, Cloud
Logging) wants one JSON object per line that it can index without a parser per program. Both
``thermoledger`` (``--log-format json``, ``THERMOLEDGER_LOG_FORMAT=json``) and
``thermoledger-server`` (the same setting) write this shape::

    {"ts": "2025-01-01T12:00:00.123456+00:00", "level": "warning", "logger": "thermoledger.cli",
     "message": "upload paused: ...", "run_id": "6f1c…"}

Fields: ``ts`` (UTC, ISO 8601, microseconds), ``level`` (lower case), ``logger``, ``message``
(the formatted message), ``run_id`` when known, ``exc`` (the traceback) when the record carries
one, and every *extra* the caller attached (``log.info("...", extra={"status": 200})``) under its
own name. Values JSON cannot hold are written as their ``str``.

The run id
    A meter process meters one run; `RunIdFilter` stamps that run's id on every record that
    does not carry one (``record.run_id``), whichever module logged it, so a line about an
    upload, a device or a spool write can be joined to its run. The id is read from a callable
    at each record, since it is resolved only while the meter starts (`meters.runid`).

Standard library only: the meter must stay light, and the service reuses this formatter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

__all__ = [
    "LOG_FORMATS",
    "JsonFormatter",
    "LogFormat",
    "RunIdFilter",
    "json_handler",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: Final[tuple[LogFormat, ...]] = ("text", "json")

# What every LogRecord has; anything else on a record was passed as ``extra``.
_RECORD_FIELDS: Final = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))
) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                out[key] = value
        if out.get("run_id") in (None, ""):
            out.pop("run_id", None)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class RunIdFilter(logging.Filter):
    """Stamps ``record.run_id`` from ``run_id()`` on records that have none; drops nothing.

    Args:
        run_id: Returns the current run id ("" or None while it is not known yet).
    """

    def __init__(self, run_id: Callable[[], str | None]) -> None:
        super().__init__()
        self.run_id = run_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "run_id", None):
            try:
                record.run_id = self.run_id() or None
            except Exception:  # a log line is not worth losing over its decoration
                record.run_id = None
        return True


def json_handler(stream: TextIO, run_id: Callable[[], str | None] | None = None) -> logging.Handler:
    """A handler writing JSON lines to ``stream``, stamping ``run_id()`` when given."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    if run_id is not None:
        handler.addFilter(RunIdFilter(run_id))
    return handler
