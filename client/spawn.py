"""Starting the daemon on first use, detached from the terminal that asked."""

from __future__ import annotations

import subprocess
import sys
import time

from rbd.client.connection import Connection
from rbd.client.errors import DaemonUnreachable, ProtocolMismatch
from rbd.contract import paths, private

SPAWN_TIMEOUT_S = 10.0


def connect_or_spawn() -> Connection:
    """A connection to the daemon, started first if none answers.

    Raises ProtocolMismatch, DaemonUnreachable if the daemon it started never
    answered, RbdError if rbd's state dir cannot be made private (one line).
    """
    try:
        return Connection.open()
    except ProtocolMismatch:
        raise
    except DaemonUnreachable:
        pass
    # Private: what a failing daemon says may name the user's projects and files.
    private.directory(paths.state_dir(), "rbd's state dir")
    log_path = paths.spawn_log_path()
    with private.open_append(log_path) as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "rbd.daemon"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
    deadline = time.monotonic() + SPAWN_TIMEOUT_S
    while True:
        try:
            return Connection.open()
        except ProtocolMismatch:
            raise
        except DaemonUnreachable:
            pass
        code = process.poll()
        # Exit 0 means another daemon won the race to the lock: keep trying to reach it.
        if code not in (None, 0) or time.monotonic() > deadline:
            raise DaemonUnreachable(
                f"the daemon did not start (exit code {code}): {_tail(log_path)}; see {log_path}"
            )
        time.sleep(0.02)


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read()[-2000:].decode(errors="replace").strip().splitlines()
    except OSError:
        return "no output"
    return lines[-1] if lines else "no output"
