"""Starting an app instance: its own session, its output in one pipe, rbd's sockets at 3.

`os.posix_spawn` places the held listening sockets at fds 3, 4, ... in the child (a
dup2 file action each: `subprocess` can only place 0-2), starts it in a session of its
own (so one signal reaches its whole process group), and restores the signals Python
ignores (SIGPIPE, SIGXFSZ) to their defaults, as `subprocess` does.

posix_spawn has no working directory and the app's pid is only known once it runs,
so the child is `/bin/sh`, which changes directory, sets `LISTEN_PID=$$` (its own pid,
which `exec` hands to the app) and execs the binary: a shell's start (about 1 ms), not
a Python process per start.
"""

from __future__ import annotations

import os
import signal
from typing import Any

# $0 is the directory, then the binary and its arguments.
_LAUNCHER = 'cd -- "$0" || exit 126; {listen}exec "$@"'
_SET_LISTEN_PID = "LISTEN_PID=$$; export LISTEN_PID; "
SHELL = "/bin/sh"


def spawn(argv: list[str], cwd: str, env: dict[str, str], listen_fds: list[int]) -> tuple[int, int]:
    """Start argv; returns (pid, the read end of its stdout+stderr pipe). The pid leads
    the app's session and process group. Raises OSError if it cannot be started."""
    read_end, write_end = os.pipe()
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, write_end, 1),
        (os.POSIX_SPAWN_DUP2, write_end, 2),
    ]
    actions += [(os.POSIX_SPAWN_DUP2, fd, 3 + i) for i, fd in enumerate(listen_fds)]
    script = _LAUNCHER.format(listen=_SET_LISTEN_PID if listen_fds else "")
    try:
        pid = os.posix_spawn(
            SHELL,
            [SHELL, "-c", script, cwd, *argv],
            env,
            file_actions=actions,
            setsid=True,
            setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
        )
    except BaseException:
        os.close(read_end)
        raise
    finally:
        os.close(write_end)
    return pid, read_end
