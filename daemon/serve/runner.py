"""Run mode for one project: the app replaced after each successful build, never before.

The old instance serves while cargo builds, and goes on serving when the build fails.
After a successful build that changed the binary (or while no instance runs): the old
instance is stopped (daemon.serve.instance: SIGTERM, SIGKILL after stop_timeout_s,
until all of it is gone), the new one is started with the listening sockets rbd holds
(daemon.serve.listen), and its readiness is awaited (daemon.serve.ready) for at most
ready_timeout_s. What happened is recorded with the build (schema.AppRun) and
announced (`app_started`, `app_ready`, `app_failed`, `app_exited`, `app_output`).

An instance that exits by itself is recorded with its status and last lines, and is
not started again until the next successful build: a crash loop would only bury the
crash's message. Replacing runs in a task of its own, so a slow start never holds up
the next build; a build that succeeds while an instance is still starting supersedes it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import structlog

from rbd.contract import protocol
from rbd.contract.schema import (
    AppExited,
    AppFailed,
    AppReady,
    AppRun,
    AppStarted,
    AppStatus,
)
from rbd.contract.schema import (
    AppOutput as AppOutputEvent,
)
from rbd.daemon.errors import ConfigError
from rbd.daemon.rpc.events import EventHub
from rbd.daemon.serve import bins, ready
from rbd.daemon.serve.instance import Instance
from rbd.daemon.serve.listen import Listeners
from rbd.daemon.serve.output import AppOutput
from rbd.daemon.store.sqlite import now_iso

log = structlog.get_logger("serve")

# The variables of the socket-passing convention: only rbd's own reach the app.
LISTEN_VARS = ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
# Lines of output a crash report and `rbd status` show.
REPORT_LINES = 20

# Records a restart with its build (the store, and the project's last summary).
Record = Callable[[int | None, AppRun], Awaitable[None]]


@dataclass(frozen=True)
class RunSettings:
    """What run mode runs and how, resolved from a project's settings and workspace."""

    bin: str | None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    listen: tuple[str, ...] = ()
    readiness: ready.Readiness | None = None
    ready_timeout_s: float = 30.0
    stop_timeout_s: float = 5.0


def settings_for(
    run: bool | str,
    bin_names: tuple[str, ...],
    default_run: str | None,
    *,
    args: tuple[str, ...],
    env: tuple[tuple[str, str], ...],
    listen: tuple[str, ...],
    ready_url: str | None,
    ready_pattern: str | None,
    ready_timeout_s: float,
    stop_timeout_s: float,
) -> RunSettings:
    """Run settings for a project; raises ConfigError when no bin can be chosen."""
    return RunSettings(
        bin=bins.choose(run, bin_names, default_run),
        args=args,
        env=env,
        listen=listen,
        readiness=ready.choose(ready_pattern, ready_url, listen),
        ready_timeout_s=ready_timeout_s,
        stop_timeout_s=stop_timeout_s,
    )


@dataclass
class _Wanted:
    build_id: int | None
    executables: dict[str, str]
    # Monotonic time of the first change that led to the build (None: no save).
    first_seen: float | None
    # Set once the old instance is stopped and the new one spawned (or nothing will be).
    handled: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class _Running:
    instance: Instance
    bin: str
    build_id: int | None
    # What the instance was started from: a build whose binary is the same file,
    # unchanged, and the same settings, does not restart it.
    identity: tuple[object, ...]
    state: str = "starting"
    since: str = field(default_factory=now_iso)
    error: str | None = None
    supervised: anyio.Event = field(default_factory=anyio.Event)
    # Shields the supervision from the runner's cancellation (see AppRunner.run).
    scope: anyio.CancelScope = field(default_factory=lambda: anyio.CancelScope(shield=True))


class AppRunner:
    """A project's app across builds. `run()` is its task; `want()` asks for a restart."""

    def __init__(
        self, project: str, root: Path, output: AppOutput, hub: EventHub, record: Record
    ) -> None:
        self.project = project
        self.root = root
        self.output = output
        self.hub = hub
        self._record = record
        self.settings: RunSettings | None = None
        self.env: dict[str, str] = {}
        self.listeners: Listeners | None = None
        self._running: _Running | None = None
        self._wanted: _Wanted | None = None
        self._wake = anyio.Event()
        # The last instance's end, when it exited by itself or could not start.
        self._ended: AppStatus | None = None

    def configure(
        self, settings: RunSettings | None, env: dict[str, str], listeners: Listeners | None
    ) -> None:
        """New settings (None: run mode off). The running instance is stopped if run mode
        went off; otherwise the next successful build starts one with the new settings."""
        old_listeners = self.listeners
        self.settings = settings
        self.env = {k: v for k, v in env.items() if k not in LISTEN_VARS}
        self.listeners = listeners
        if old_listeners is not None and old_listeners is not listeners:
            old_listeners.close()
        if settings is None:
            self._wake.set()

    @property
    def enabled(self) -> bool:
        return self.settings is not None

    def want(
        self,
        build_id: int | None,
        executables: dict[str, str],
        first_seen: float | None,
    ) -> anyio.Event | None:
        """A build succeeded: replace the app with what it made (a newer want replaces
        one not yet acted on). Returns an event set once the old instance is stopped
        and the new one spawned, or once nothing will be (None: run mode is off)."""
        if self.settings is None:
            return None
        if self._wanted is not None:
            self._wanted.handled.set()
        self._wanted = _Wanted(build_id, executables, first_seen)
        self._wake.set()
        return self._wanted.handled

    def status(self) -> AppStatus | None:
        if self.settings is None:
            return None
        base: AppStatus = {
            "state": "none",
            "pid": None,
            "bin": self.settings.bin,
            "build_id": None,
            "since": None,
            "exit_code": None,
            "last_lines": [],
            "log": str(self.output.path),
            "listen": list(self.settings.listen),
            "error": None,
        }
        running = self._running
        if running is not None:
            return {
                **base,
                "state": running.state,
                "pid": running.instance.pid,
                "bin": running.bin,
                "build_id": running.build_id,
                "since": running.since,
                "error": running.error,
            }
        if self._ended is not None:
            return {**self._ended, "listen": list(self.settings.listen)}
        return base

    async def run(self) -> None:
        """The project's run-mode task: until cancelled (project stopped, daemon shutting
        down), when the running instance is stopped, shielded.

        Each instance's supervision is shielded from that cancellation: it must see the
        instance's end (to wait for its exit status, so no zombie is left, and announce
        `app_exited`) after the stop below, not be cut off before it."""
        try:
            async with anyio.create_task_group() as tg:
                try:
                    while True:
                        await self._wake.wait()
                        self._wake = anyio.Event()
                        if self.settings is None:
                            if self._wanted is not None:
                                self._wanted.handled.set()
                                self._wanted = None
                            await self._stop_running()
                            continue
                        wanted, self._wanted = self._wanted, None
                        if wanted is not None:
                            try:
                                await self._replace(tg, wanted, self.settings)
                            finally:
                                wanted.handled.set()
                finally:
                    with anyio.CancelScope(shield=True):
                        running = self._running
                        await self._stop_running()
                        if running is not None and not running.supervised.is_set():
                            # Killed, yet not seen to end: end its supervision regardless.
                            running.scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                if self.listeners is not None:
                    self.listeners.close()
                    self.listeners = None
                self.output.close()

    async def _stop_running(self) -> float | None:
        """Stop the running instance, if any; the seconds it took."""
        running, self._running = self._running, None
        if running is None:
            return None
        settings = self.settings
        timeout = settings.stop_timeout_s if settings is not None else 5.0
        took = await running.instance.stop(timeout)
        # Its app_exited is announced before anything that follows.
        with anyio.move_on_after(2.0):
            await running.supervised.wait()
        return took

    def _identity(self, path: str, settings: RunSettings) -> tuple[object, ...]:
        try:
            info = os.stat(path)
            stamp: tuple[object, ...] = (info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        except OSError:
            stamp = ()
        return (path, *stamp, settings, tuple(sorted(self.env.items())))

    async def _replace(
        self, tg: anyio.abc.TaskGroup, wanted: _Wanted, settings: RunSettings
    ) -> None:
        app: AppRun = {
            "pid": None,
            "bin": settings.bin,
            "stop_s": None,
            "ready_s": None,
            "serving_s": None,
            "replaced_exit": None,
            "handover": bool(settings.listen),
            "ready_by": None if settings.readiness is None else settings.readiness.by,
            "error": None,
        }
        try:
            path = bins.executable(settings.bin, wanted.executables)
        except ConfigError as exc:
            await self._failed(wanted, app, str(exc))
            return
        name = settings.bin or Path(path).name
        app["bin"] = name
        identity = self._identity(path, settings)
        running = self._running
        if (
            running is not None
            and running.identity == identity
            and not running.instance.exited.is_set()
        ):
            return  # the same binary, unchanged, runs already: nothing to replace
        if not os.access(path, os.X_OK):
            await self._failed(wanted, app, f"{path} is not executable (chmod +x, or rebuild)")
            return
        if running is not None:
            app["stop_s"] = round(await self._stop_running() or 0.0, 4)
            app["replaced_exit"] = running.instance.returncode
        argv = [path, *settings.args]
        env = {**self.env, **dict(settings.env)}
        fds: list[int] = []
        if self.listeners is not None and settings.listen:
            fds = self.listeners.fds
            env["LISTEN_FDS"] = str(len(fds))
            env["LISTEN_FDNAMES"] = self.listeners.names
        pattern = settings.readiness.pattern if settings.readiness is not None else None
        instance = Instance(argv, str(self.root), env, fds, self.output, self._lines, pattern)
        self.output.note(f"--- rbd: build {wanted.build_id}: starting {' '.join(argv)} ---")
        try:
            instance.start()
        except OSError as exc:
            await self._failed(wanted, app, f"cannot start {path}: {exc.strerror or exc}")
            return
        self._ended = None
        current = _Running(instance, name, wanted.build_id, identity)
        self._running = current
        app["pid"] = instance.pid
        tg.start_soon(self._supervise, current)
        started: AppStarted = {
            "event": protocol.APP_STARTED,
            "project": self.project,
            "build_id": wanted.build_id,
            "pid": instance.pid,
            "bin": name,
            "argv": argv,
            "listen": list(settings.listen),
            "handover": bool(fds),
        }
        self.hub.publish(started)
        wanted.handled.set()
        log.info("app_started", root=self.project, pid=instance.pid, bin=name)
        await self._await_ready(current, wanted, settings, app)

    async def _await_ready(
        self, current: _Running, wanted: _Wanted, settings: RunSettings, app: AppRun
    ) -> None:
        instance = current.instance
        readiness = settings.readiness
        if readiness is None:
            current.state = "running"
            await self._record(wanted.build_id, app)
            return
        outcome = "timeout"
        with anyio.move_on_after(settings.ready_timeout_s):
            async with anyio.create_task_group() as race:

                async def until_ready() -> None:
                    nonlocal outcome
                    await ready.wait(readiness, instance.pid, instance.matched)
                    outcome = "ready"
                    race.cancel_scope.cancel()

                async def until_exit() -> None:
                    nonlocal outcome
                    await instance.exited.wait()
                    outcome = "exited"
                    race.cancel_scope.cancel()

                async def until_newer() -> None:
                    nonlocal outcome
                    await self._wake.wait()
                    outcome = "superseded"
                    race.cancel_scope.cancel()

                race.start_soon(until_ready)
                race.start_soon(until_exit)
                race.start_soon(until_newer)
        now = time.monotonic()
        if outcome == "ready":
            current.state = "ready"
            app["ready_s"] = round(now - instance.started_at, 4)
            if wanted.first_seen is not None:
                app["serving_s"] = round(now - wanted.first_seen, 4)
            event: AppReady = {
                "event": protocol.APP_READY,
                "project": self.project,
                "build_id": wanted.build_id,
                "pid": instance.pid,
                "app": app,
            }
            self.hub.publish(event)
            log.info("app_ready", root=self.project, pid=instance.pid, ready_s=app["ready_s"])
            await self._record(wanted.build_id, app)
            return
        if outcome == "exited":
            # Its last lines and exit status are read by its supervision first.
            with anyio.move_on_after(1.0):
                await current.supervised.wait()
            code = instance.returncode
            error = f"exited before it was ready ({_describe(code)})"
        elif outcome == "superseded":
            error = "replaced by a newer build before it was ready"
        else:
            current.state = "running"
            error = (
                f"not ready after {settings.ready_timeout_s:g} s (by {readiness.by}); "
                "left running: set ready_url or ready_pattern if it serves elsewhere"
            )
        current.error = error
        await self._failed(wanted, app, error, record_only=outcome == "superseded")

    async def _failed(
        self, wanted: _Wanted, app: AppRun, error: str, record_only: bool = False
    ) -> None:
        app["error"] = error
        log.warning("app_failed", root=self.project, build_id=wanted.build_id, error=error)
        last = self.output.last(REPORT_LINES)
        ended = self._ended
        if self._running is None and (ended is None or ended["build_id"] != wanted.build_id):
            self._ended = {
                "state": "failed",
                "pid": app["pid"],
                "bin": app["bin"],
                "build_id": wanted.build_id,
                "since": now_iso(),
                "exit_code": None,
                "last_lines": last,
                "log": str(self.output.path),
                "listen": [],
                "error": error,
            }
        await self._record(wanted.build_id, app)
        if record_only:
            return
        event: AppFailed = {
            "event": protocol.APP_FAILED,
            "project": self.project,
            "build_id": wanted.build_id,
            "pid": app["pid"],
            "app": app,
            "last_lines": last,
        }
        self.hub.publish(event)

    def _lines(self, instance: Instance, lines: list[str]) -> None:
        running = self._running
        event: AppOutputEvent = {
            "event": protocol.APP_OUTPUT,
            "project": self.project,
            "build_id": running.build_id if running is not None else None,
            "pid": instance.pid,
            "lines": lines,
        }
        self.hub.publish(event)

    async def _supervise(self, running: _Running) -> None:
        with running.scope:
            await self._watch(running)

    async def _watch(self, running: _Running) -> None:
        instance = running.instance
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(instance.supervise)
                # Its exit, not the end of its output: a child still holding the pipe must
                # not hide a crash until the next restart.
                await instance.exited.wait()
                expected = instance.stopping
                if not expected:
                    # Exited by itself: what it started must not outlive it either.
                    with anyio.CancelScope(shield=True):
                        await instance.stop(0.0)
            code = instance.returncode
            last = self.output.last(REPORT_LINES)
            event: AppExited = {
                "event": protocol.APP_EXITED,
                "project": self.project,
                "build_id": running.build_id,
                "pid": instance.pid,
                "exit_code": code,
                "signal": -code if code is not None and code < 0 else None,
                "expected": expected,
                "last_lines": [] if expected else last,
            }
            self.hub.publish(event)
            if not expected and self._running is running:
                self._running = None
                self._ended = {
                    "state": "exited",
                    "pid": instance.pid,
                    "bin": running.bin,
                    "build_id": running.build_id,
                    "since": now_iso(),
                    "exit_code": code,
                    "last_lines": last,
                    "log": str(self.output.path),
                    "listen": [],
                    "error": f"exited by itself ({_describe(code)}); it starts again after "
                    "the next successful build",
                }
                log.warning("app_exited", root=self.project, pid=instance.pid, code=code)
        finally:
            running.supervised.set()


def _describe(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"
