"""One running instance of a project's app: started, watched, and stopped with all it started.

The instance leads a session and process group of its own and carries a marker of
rbd's (`RBD_BUILD`, see daemon.build.procs) in its environment, so the ties that find
a build's processes find the app's too: the group, the marker (a child that moved to
another group or session), and descent. Stopping is SIGTERM to all of them, SIGKILL to
what is left after stop_timeout_s, and a wait until none is left, so that the port and
every file the old instance held are free before the next starts. A daemon that
crashes leaves the marker behind; the next one kills what carries it at its start.

The exit is waited for through a pidfd (Linux 5.3+; elsewhere waitpid is polled), and
the instance's pid is registered with procs as led, so the daemon's reaping of
adopted orphans never takes the exit status this waiter reads.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Callable

import anyio
import structlog

from rbd.daemon.build import procs
from rbd.daemon.serve import spawn
from rbd.daemon.serve.output import AppOutput

log = structlog.get_logger("serve")

# While the app runs, waitpid is polled this often where there is no pidfd.
WAITPID_POLL_S = 0.05
# A chunk of the app's output read at once.
READ_BYTES = 65536


class Instance:
    """One start of the app. `start()` runs it; `supervise()` reads its output and waits
    for its exit; `stop()` ends it and everything it started."""

    def __init__(
        self,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        listen_fds: list[int],
        output: AppOutput,
        on_lines: Callable[[Instance, list[str]], None],
        pattern: re.Pattern[str] | None = None,
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        self.env = env
        self.listen_fds = listen_fds
        self.output = output
        self._on_lines = on_lines
        self._pattern = pattern
        self.marker = procs.new_marker()
        self.pid = 0
        self.started_at = 0.0
        self.started_wall = 0.0
        self.returncode: int | None = None
        self.exited = anyio.Event()
        # Set when a line of output matched the ready pattern.
        self.matched = anyio.Event()
        # rbd asked it to stop: its exit is expected, not a crash.
        self.stopping = False
        self._read_fd = -1
        self._output_done = anyio.Event()

    def start(self) -> None:
        """Start the app; raises OSError if it cannot be (the shell missing, no fds)."""
        env = {**self.env, procs.MARKER: self.marker}
        with procs.spawning():
            self.pid, self._read_fd = spawn.spawn(self.argv, self.cwd, env, self.listen_fds)
            procs.lead(self.pid)
        self.started_at = time.monotonic()
        self.started_wall = time.time()
        os.set_blocking(self._read_fd, False)

    async def supervise(self) -> None:
        """Read the output until the pipe closes and wait for the exit (a task per instance)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._read)
            await self._wait()

    async def _read(self) -> None:
        try:
            while True:
                await anyio.wait_readable(self._read_fd)
                try:
                    data = os.read(self._read_fd, READ_BYTES)
                except BlockingIOError:
                    continue
                if not data:
                    break
                self._lines(self.output.feed(data))
        finally:
            self._lines(self.output.flush())
            os.close(self._read_fd)
            self._output_done.set()

    def _lines(self, lines: list[str]) -> None:
        if not lines:
            return
        pattern = self._pattern
        matched = self.matched
        if pattern is not None and not matched.is_set() and any(map(pattern.search, lines)):
            matched.set()
        self._on_lines(self, lines)

    async def _wait(self) -> None:
        pidfd = -1
        with contextlib.suppress(OSError, AttributeError):
            pidfd = os.pidfd_open(self.pid)
        try:
            while True:
                if pidfd >= 0:
                    await anyio.wait_readable(pidfd)
                else:
                    await anyio.sleep(WAITPID_POLL_S)
                try:
                    done, status = os.waitpid(self.pid, os.WNOHANG)
                except ChildProcessError:
                    # Reaped by someone else: gone, status unknown.
                    done, status = self.pid, -1
                if done == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status) if status != -1 else None
                    break
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            self.exited.set()

    def processes(self) -> set[int]:
        """Every live process of the instance: its group, what carries its marker, and
        their descendants (reads each process's environment: call off the event loop)."""
        return procs.build_processes(self.marker, self.pid)

    async def stop(self, timeout_s: float) -> float:
        """SIGTERM to every process of the instance, SIGKILL to what is left after
        timeout_s, and return once none is left (or after 5 s more, logged): the seconds
        it took."""
        began = time.monotonic()
        self.stopping = True
        with anyio.CancelScope(shield=True):
            # The group at once. What left it is found by its marker (a scan of every
            # process's environment, some milliseconds) once the leader is gone, and
            # signalled then: one scan when nothing escaped, the usual case.
            _signal_all(set(), signal.SIGTERM, self.pid)
            left = True
            with anyio.move_on_after(timeout_s):
                await self.exited.wait()
                # Its children may take their time too; all share the one deadline.
                delay = 0.002
                signalled: set[int] = set()
                while pids := await anyio.to_thread.run_sync(self.processes):
                    _signal_all(pids - signalled, signal.SIGTERM, self.pid)
                    signalled |= pids
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.05)
                left = False
            # What ignored SIGTERM past the deadline (or a stop with none given) is killed.
            if left and not await procs.kill_build_and_wait(self.marker, self.pid):
                log.error("app_survived_kill", pid=self.pid)
            with anyio.move_on_after(5.0):
                await self.exited.wait()
            # The pipe closes once the last process holding it is gone.
            with anyio.move_on_after(1.0):
                await self._output_done.wait()
        return time.monotonic() - began


def _signal_all(pids: set[int], signum: int, pgid: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in pids:
        try:
            os.kill(pid, signum)
        except (ProcessLookupError, PermissionError):
            pass
