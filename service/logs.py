"""Logging of ``thermoledger-server serve``: text for people, JSON lines for log pipelines.

`log_config` is the `logging.config.dictConfig` mapping handed to uvicorn: one stderr handler
for uvicorn's own loggers and thermoledger's (``thermoledger.*``, with the request log
``thermoledger.service.access`` of `service.metrics`), formatted as text or as
`meters.logs.JsonFormatter`
lines (``THERMOLEDGER_LOG_FORMAT=json`` / ``--log-format json``). uvicorn's access log is off:
the service's request log replaces it and carries the route template and the run id.
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["log_config"]

_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def log_config(log_format: Literal["text", "json"], level: str = "info") -> dict[str, Any]:
    """The dictConfig for uvicorn and the service.

    Args:
        log_format: ``text`` or ``json``.
        level: Level of the server's loggers (``debug``, ``info``, ``warning`` …).

    Returns:
        A `logging.config.dictConfig` mapping (version 1).
    """
    formatter: dict[str, Any] = (
        {"()": "thermoledger.meters.logs.JsonFormatter"}
        if log_format == "json"
        else {"format": _TEXT}
    )
    level_name = level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
    logger = {"handlers": ["stderr"], "level": level_name, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {"stderr": handler},
        "loggers": {
            "uvicorn": logger,
            "uvicorn.error": {"level": level_name},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            # The package's root logger: a key "service" would match no thermoledger.* logger.
            "thermoledger": logger,
        },
    }
