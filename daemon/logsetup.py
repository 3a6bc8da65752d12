"""structlog configured to write JSON lines to the daemon's log file."""

from __future__ import annotations

import logging
import os
from typing import BinaryIO, TextIO, cast

import structlog

# Kept once at start-up: a daemon running for weeks must not fill the disk.
MAX_LOG_BYTES = 20 << 20


class LogFile:
    """The log's file, written a line at a time, unbuffered. A line that cannot be
    written (disk full, I/O error) is dropped: the daemon must outlive its log,
    and the line could not be written anywhere else either."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file

    def write(self, text: str) -> int:
        try:
            return self.file.write(text.encode("utf-8", "backslashreplace"))
        except OSError:
            return 0

    def flush(self) -> None:
        pass  # unbuffered: every write went to the file already


def configure(path: str) -> LogFile:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        if os.path.getsize(path) > MAX_LOG_BYTES:
            os.replace(path, path + ".1")
    except FileNotFoundError:
        pass
    stream = LogFile(open(path, "ab", buffering=0))  # noqa: SIM115 (lives as long as the daemon)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        # WriteLogger only calls write() and flush().
        logger_factory=structlog.WriteLoggerFactory(file=cast(TextIO, stream)),
        cache_logger_on_first_use=True,
    )
    return stream
