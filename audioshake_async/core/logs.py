"""Logging switches: ``AUDIOSHAKE_LOG=debug`` for library users, one call for the CLI.

The package logs to the ``audioshake_async`` logger tree and, like any library, adds no handler
unless asked: an application routes the records where it wants. Records carry structured fields
through ``extra=`` (read them as attributes of the ``LogRecord``, e.g. for JSON logs):

``route``       the API route (``"GET /tasks/{id}"``, ``"POST /tasks"``, ``"GET <download>"``)
``attempt``     the retry number (0 for the first try)
``status``      the HTTP status, when there is one
``delay``       seconds about to be waited (backoff, rate-limit pause)
``reason``      why a retry happens (``"HTTP 503"``, ``"ClientConnectorError"``)
``request_id``  the service's request id, when it sent one
``task_id``     the task concerned (batch records)
``input``       the batch input concerned
``file``        the output file concerned (downloads)

Not every record has every field: use ``getattr(record, "task_id", None)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import TextIO

__all__ = [
    "ENV_LOG",
    "LOGGER_NAME",
    "STRUCTURED_FIELDS",
    "configure_logging",
    "level_from_env",
    "logging_to",
]

#: The environment switch: ``debug``, ``info``, ``warning`` (case-insensitive).
ENV_LOG = "AUDIOSHAKE_LOG"
LOGGER_NAME = "audioshake_async"
STRUCTURED_FIELDS = (
    "route",
    "attempt",
    "status",
    "delay",
    "reason",
    "request_id",
    "task_id",
    "input",
    "file",
)

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# The handler this module installed, so a second call replaces it instead of doubling lines.
_installed: logging.Handler | None = None


def level_from_env(environ: dict[str, str] | None = None) -> int | None:
    """The level ``AUDIOSHAKE_LOG`` asks for, or None when unset or not a known level."""
    value = (environ if environ is not None else os.environ).get(ENV_LOG, "").strip().lower()
    return _LEVELS.get(value)


def configure_logging(
    level: int, *, handler: logging.Handler | None = None, stream: TextIO | None = None
) -> logging.Handler:
    """Send the package's records at ``level`` and above to ``handler`` (default: ``stream``,
    i.e. stderr); replaces the handler an earlier call installed. Returns the handler."""
    global _installed
    logger = logging.getLogger(LOGGER_NAME)
    if _installed is not None:
        logger.removeHandler(_installed)
    chosen = handler or logging.StreamHandler(stream)
    if chosen.formatter is None:
        chosen.setFormatter(logging.Formatter(_FORMAT))
    logger.addHandler(chosen)
    logger.setLevel(level)
    _installed = chosen
    return chosen


@contextlib.contextmanager
def logging_to(handler: logging.Handler, level: int) -> Iterator[logging.Handler]:
    """The package's records at ``level`` go to ``handler`` inside the block only; the logger's
    level and handlers are restored after (a CLI run inside a longer-lived process)."""
    logger = logging.getLogger(LOGGER_NAME)
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def configure_from_env() -> None:
    """Apply ``AUDIOSHAKE_LOG`` if it is set (called once, on ``import audioshake_async``)."""
    level = level_from_env()
    if level is not None:
        configure_logging(level)
