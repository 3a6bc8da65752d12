"""structlog configured to write JSON lines to the daemon's log file."""

from __future__ import annotations

import logging
import os
from typing import BinaryIO, TextIO, cast

import structlog

from rbd.contract import private

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
    """Log to path, in rbd's state dir, which this makes private with everything in it
    (the store keeps `rbd start`'s environment; rbd.contract.private).

    Raises RbdError (one line) if the state dir or the log cannot be made private.
    """
    private.directory(os.path.dirname(path), "rbd's state dir", contents=True)
    try:
        if os.path.getsize(path) > MAX_LOG_BYTES:
            os.replace(path, path + ".1")
    except OSError:
        pass  # no log yet, or one that cannot be set aside: appended to below
    stream = LogFile(private.open_append(path))
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
