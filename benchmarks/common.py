"""What the figure modules share: a private daemon, reading a process's CPU and memory
from /proc, and following the daemon's event stream with timeouts.

Every figure module has `run(quick: bool) -> list[Row]`; `benchmarks/suite.py`
runs them and prints each figure's rows with `benchmarks.daemon_loop.report`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.daemon_loop import Row, percentile, report  # noqa: E402
from rbd.contract import protocol  # noqa: E402
from tests.conftest import Events, Rbd  # noqa: E402

__all__ = [
    "ROOT",
    "BuildCount",
    "Row",
    "count_builds",
    "cpu_seconds",
    "ms",
    "next_event",
    "percentile",
    "private_daemon",
    "remove_shared_cache",
    "report",
    "status_kb",
]

# utime and stime in /proc/<pid>/stat are in clock ticks (100 per second on
# Linux): CPU times read from it are exact to 10 ms.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def private_daemon(prefix: str) -> Iterator[tuple[Rbd, Path]]:
    """A daemon of our own (XDG dirs in a temp dir) and a dir for crates; both gone after.

    The temp dir is under /tmp because a Unix socket path must fit in 108 bytes.
    """
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    rbd = Rbd(base)
    try:
        rbd.start_daemon()
        yield rbd, base
    finally:
        rbd.close()
        shutil.rmtree(base, ignore_errors=True)


def remove_shared_cache() -> None:
    """Remove the cache dir tests.conftest made when imported (the daemons' compiled
    rustc wrapper). Only a pytest session's end removes it otherwise: a script run
    outside pytest calls this at its end."""
    conftest = sys.modules.get("tests.conftest")
    if conftest is not None:
        shutil.rmtree(conftest.SHARED_CACHE, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads, living or ended) the process has used so far."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kb(pid: int, key: str) -> int:
    """A `kB` line of /proc/<pid>/status, e.g. VmRSS or VmHWM."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def next_event(events: Events, timeout: float) -> dict[str, Any] | None:
    """The next event of the stream, or None if none came within timeout (seconds).

    Events.wait_for raises on a timeout; a benchmark that waits for quiet needs
    the timeout as an answer instead.
    """
    try:
        event = events.queue.get(timeout=max(timeout, 0.0))
    except queue.Empty:
        return None
    events.seen.append(event)
    if event.get("event") == "_closed":
        raise AssertionError("the daemon closed the event stream")
    return event


@dataclass
class BuildCount:
    started: int = 0
    outcomes: list[str] = field(default_factory=list)
    # Wall-clock time (time.time()) of the last build_started and build_finished seen.
    last_started: float | None = None
    last_finished: float | None = None


def count_builds(events: Events, quiet_s: float, limit_s: float = 120.0) -> BuildCount:
    """Count the builds that start from now until the daemon is idle: no build running,
    and no build_started for quiet_s. Raises if that has not happened after limit_s."""
    count = BuildCount()
    building = False
    deadline = time.monotonic() + limit_s
    quiet_until = time.monotonic() + quiet_s
    while True:
        now = time.monotonic()
        if now >= deadline:
            raise AssertionError(f"the daemon was not idle within {limit_s} s: {count}")
        # While a build runs, the quiet window cannot end: wait for its end instead.
        wait = (deadline - now) if building else (quiet_until - now)
        if not building and wait <= 0:
            return count
        event = next_event(events, min(wait, deadline - now))
        if event is None:
            continue
        name = event.get("event")
        if name == protocol.BUILD_STARTED:
            count.started += 1
            count.last_started = time.time()
            building = True
        elif name == protocol.BUILD_FINISHED:
            count.outcomes.append(str(event["build"]["outcome"]))
            count.last_finished = time.time()
            building = False
            quiet_until = time.monotonic() + quiet_s
