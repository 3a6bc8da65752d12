"""What a project's app prints: kept in a bounded, rotated log file and its last lines.

stdout and stderr arrive interleaved through one pipe, as a terminal shows them. The
file (`<state dir>/apps/<digest of the root>.log`, 0600 like all of rbd's state) holds
at most MAX_BYTES before it is moved to `.log.1` (one generation kept), so a chatty
server never fills the disk; the last LAST_LINES lines stay in memory for `rbd status`,
a crash report and `rbd logs --app`. A write the disk refuses is logged once and the
lines are still kept in memory: the app's output never stops the app.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from pathlib import Path
from typing import BinaryIO

import structlog

from rbd.contract import private
from rbd.contract.errors import RbdError

log = structlog.get_logger("serve")

MAX_BYTES = 4 << 20
LAST_LINES = 200
# A line longer than this is cut (a minified payload printed by mistake).
MAX_LINE_CHARS = 4096
# `rbd logs --app` reads at most this many of the last lines.
MAX_TAIL_LINES = 10_000


def log_path(apps_dir: Path, root: str) -> Path:
    """Where the app output of the project at root is kept, in apps_dir."""
    digest = hashlib.sha256(root.encode()).hexdigest()[:16]
    return apps_dir / f"{digest}.log"


class AppOutput:
    """One project's app output, across its instances."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines: deque[str] = deque(maxlen=LAST_LINES)
        self._pending = b""
        self._file: BinaryIO | None = None
        self._size = 0
        self._failed = False

    def _write(self, data: bytes) -> None:
        try:
            if self._file is None:
                private.directory(str(self.path.parent), "rbd's app logs")
                self._file = private.open_append(str(self.path))
                self._size = os.fstat(self._file.fileno()).st_size
            if self._size + len(data) > MAX_BYTES:
                self._file.close()
                self._file = None
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
                self._file = private.open_append(str(self.path))
                self._size = 0
            self._file.write(data)
            self._size += len(data)
            self._failed = False
        except (OSError, RbdError) as exc:
            if not self._failed:
                self._failed = True
                log.error("app_log_failed", path=str(self.path), error=str(exc))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def feed(self, data: bytes) -> list[str]:
        """Take a chunk the app wrote; returns its complete lines (an unfinished one waits
        for the rest, or for `flush`)."""
        self._write(data)
        *complete, self._pending = (self._pending + data).split(b"\n")
        if len(self._pending) > MAX_LINE_CHARS * 4:
            complete.append(self._pending)
            self._pending = b""
        return self._keep(complete)

    def flush(self) -> list[str]:
        """The unfinished last line, once the app's pipe closed."""
        rest, self._pending = self._pending, b""
        return self._keep([rest] if rest else [])

    def note(self, text: str) -> None:
        """A line of rbd's own between instances (`--- rbd: started build 12's web ---`)."""
        self._write(text.encode() + b"\n")

    def _keep(self, raw: list[bytes]) -> list[str]:
        lines = [line.decode(errors="replace").rstrip("\r")[:MAX_LINE_CHARS] for line in raw]
        self.lines.extend(lines)
        return lines

    def last(self, count: int) -> list[str]:
        return list(self.lines)[-count:] if count > 0 else []


def tail(path: Path, count: int) -> list[str] | None:
    """The last count lines of an app log (the rotated generation first when the current
    one is short); None when there is none."""
    chunks: list[bytes] = []
    found = False
    budget = count * MAX_LINE_CHARS
    for candidate in (path, path.with_name(path.name + ".1")):
        try:
            with open(candidate, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - budget))
                data = f.read(budget)
        except OSError:
            continue
        found = True
        chunks.insert(0, data)
        if data.count(b"\n") >= count:
            break
    if not found:
        return None
    lines = b"".join(chunks).decode(errors="replace").splitlines()
    return lines[-count:]
