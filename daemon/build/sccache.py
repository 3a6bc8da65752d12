"""sccache's server, started outside any build, so that sweeping a build spares it.

Everything a build leaves running is killed when it ends (procs: its group, its
marker, its descendants). sccache's client starts its server on first use, as a
daemon in a session of its own and with the build's environment, marker included:
swept with the build, the server would be started again by every build (its start
and its in-memory state lost each time). So when the user's RUSTC_WRAPPER is
sccache, rbd makes sure a server runs before cargo does, started by rbd with the
project's environment and no marker: the build's clients then find it.

Asking `sccache --start-server` every build would cost 10-16 ms (measured, sccache
0.4) on the way from a save to cargo; a connect to the server's port costs well
under a millisecond, so that comes first and the server is started only when
nothing answers (the first build, or after its idle timeout). The server the daemon
starts is reparented to it (the daemon is a child subreaper) and so ends with it.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import anyio
import structlog

log = structlog.get_logger("builder")

DEFAULT_PORT = 4226
START_TIMEOUT_S = 10.0


def is_sccache(wrapper: str) -> bool:
    return Path(wrapper).name.startswith("sccache")


def _answers(env: dict[str, str]) -> bool:
    """Whether an sccache server accepts connections where env's clients would look."""
    uds = env.get("SCCACHE_SERVER_UDS")
    try:
        if uds:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.2)
                sock.connect(uds)
            return True
        port = int(env.get("SCCACHE_SERVER_PORT") or DEFAULT_PORT)
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except (OSError, ValueError):
        return False


async def ensure_server(wrapper: str, env: dict[str, str]) -> None:
    """Start wrapper's server (wrapper is sccache) unless one answers already. Never
    raises: a server that cannot be started is the build's clients' to start, as
    without rbd, and its failure is theirs to report."""
    if _answers(env):
        return
    try:
        with anyio.fail_after(START_TIMEOUT_S):
            done = await anyio.run_process(
                [wrapper, "--start-server"], env=env, check=False, stdin=subprocess.DEVNULL
            )
    except (OSError, TimeoutError) as exc:
        log.warning("sccache_not_started", wrapper=wrapper, error=str(exc))
        return
    # 2 with "Address in use": another one got there first, which is as good.
    if done.returncode not in (0, 2):
        log.warning(
            "sccache_not_started",
            wrapper=wrapper,
            error=done.stderr.decode(errors="replace").strip()[:500],
        )
