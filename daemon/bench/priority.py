"""cargo at the lowest CPU and I/O priority, for idle benches.

A process's nice value, scheduling policy and I/O class are inherited by every process
it starts, so setting them on cargo before it runs covers its rustc, build scripts and
linkers. The builder spawns cargo through the event loop, which offers no hook in the
child before exec; so an idle bench runs cargo through a small wrapper script instead,
which execs, in turn:

- `nice -n 19`: the lowest CPU priority POSIX has;
- `ionice -c 3` (Linux, util-linux): the idle I/O class, served only when no other
  process wants the disk;
- `chrt --idle 0` (Linux, util-linux): SCHED_IDLE, below even nice 19: a runnable
  process of any other policy always goes first.

Each is exec'd, so cargo keeps the pid (and the process group, the session) the builder
gave the first: killing the group still kills everything. Each tool is checked once
(`tool args true` must exit 0): a container may refuse a policy, a system lack the tool;
what fails is left out and what is left still applies. Checked here (Linux 6.18, in a
container, unprivileged): all three work. A wrapper costs about 2 ms of exec per build,
the same for every configuration of a bench.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import structlog

log = structlog.get_logger("bench")

# (tool, its arguments before the command); in the order they are chained.
TOOLS = (
    ("nice", ("-n", "19")),
    ("ionice", ("-c", "3")),
    ("chrt", ("--idle", "0")),
)
CHECK_TIMEOUT_S = 5.0
WRAPPER = "idle-cargo"


def usable(path: str) -> list[str]:
    """The prefix of the tools above that exist on path and work here (each checked by
    running it on `true`). Blocking: run it in a worker thread."""
    prefix: list[str] = []
    for tool, args in TOOLS:
        found = shutil.which(tool, path=path)
        if found is None:
            continue
        try:
            done = subprocess.run(
                [found, *args, "true"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=CHECK_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("idle_priority_unusable", tool=tool, error=str(exc))
            continue
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip()[-200:]
            log.warning("idle_priority_unusable", tool=tool, error=error)
            continue
        prefix += [found, *args]
    return prefix


def write_wrapper(directory: Path, prefix: list[str]) -> Path:
    """A script in directory that runs `cargo` (as PATH finds it) with its arguments
    behind prefix; returns its path. Blocking."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / WRAPPER
    command = " ".join(shlex.quote(word) for word in prefix)
    text = (
        "#!/bin/sh\n"
        "# rbd's idle benches: cargo at the lowest CPU and I/O priority.\n"
        f'exec {command} cargo "$@"\n'
    )
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.chmod(temporary, 0o755)
    os.replace(temporary, path)
    return path
