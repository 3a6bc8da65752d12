"""structlog configured to write JSON lines to the daemon's log file."""

from __future__ import annotations

import logging
import os
from typing import TextIO

import structlog

# Kept once at start-up: a daemon running for weeks must not fill the disk.
MAX_LOG_BYTES = 20 << 20


def configure(path: str) -> TextIO:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        if os.path.getsize(path) > MAX_LOG_BYTES:
            os.replace(path, path + ".1")
    except FileNotFoundError:
        pass
    stream = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (lives as long as the daemon)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.WriteLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    return stream
