"""A watched project: its watcher and scheduler, the builds they start, and its state.

The project's state (protocol.STATES) is the scheduler's, or `gone` while its root does
not exist; every change of it is published as a `project_state` event. How a build is
recorded (store, process group, events) is daemon.projects.recorder's; the set of watched
projects is daemon.projects.registry's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from rbd.contract import protocol
from rbd.contract.schema import (
    AppRun,
    BuildSummary,
    CurrentBuild,
    ProjectState,
    ProjectStatus,
    State,
)
from rbd.daemon.build import cargo_config, kinds
from rbd.daemon.build.builder import Build
from rbd.daemon.build.configurations import BuildConfig
from rbd.daemon.build.records import BuildHeader, BuildResult
from rbd.daemon.build.shim import Shims
from rbd.daemon.errors import DaemonError, NotWatched, ProjectError, StoreError
from rbd.daemon.projects import conditions, recorder
from rbd.daemon.projects import workspace as workspaces
from rbd.daemon.projects.settings import ProjectConfig
from rbd.daemon.rpc.events import EventHub
from rbd.daemon.serve.listen import Listeners
from rbd.daemon.serve.output import AppOutput
from rbd.daemon.serve.runner import AppRunner, RunSettings
from rbd.daemon.store.asyncstore import AsyncStore
from rbd.daemon.store.sqlite import now_iso
from rbd.daemon.watch.scheduler import Scheduler
from rbd.daemon.watch.watcher import Watcher

log = structlog.get_logger("projects")

# The environment variables `rbd status` shows: the ones that decide what cargo builds.
SHOWN_ENV_PREFIXES = ("CARGO", "RUST", "RBD_")
SHOWN_ENV = frozenset({"PATH", "CC", "CXX", "HOME"})


@dataclass
class _Requested:
    """An `rbd build` waiting for the build that covers it; `build` stays None if none ran."""

    done: anyio.Event = field(default_factory=anyio.Event)
    build: BuildSummary | None = None
    first_error: str | None = None


class Project:
    def __init__(
        self,
        workspace: workspaces.Workspace,
        env: dict[str, str],
        overrides: dict[str, Any],
        config: ProjectConfig,
        store: AsyncStore,
        hub: EventHub,
        shims: Shims,
        build_config: BuildConfig,
        app_output: AppOutput,
    ) -> None:
        self.workspace = workspace
        self.build_config = build_config
        self.root = workspace.root
        self.env = env
        self.overrides = overrides
        self.config = config
        self.store = store
        self.hub = hub
        self.shims = shims
        # What each build runs with (toolchain, Cargo.lock, profile...), read beside it.
        self.conditions = conditions.Collector(store)
        # Run mode (idle while it is off): the app replaced after each successful build.
        self.runner = AppRunner(self.key, self.root, app_output, hub, self.record_app)
        self.problem: str | None = None
        # A manifest changed: re-read the workspace before the next build.
        self._reload_soon = False
        self.last_build: BuildSummary | None = None
        self.current: recorder.Recording | None = None
        self._build: Build | None = None
        # Run mode's restart when it was recorded before its build finished recording.
        self._app_early: tuple[int, AppRun] | None = None
        # The first error of the build last finished (the summary has none).
        self._first_error: str | None = None
        # `rbd build`s waiting, by their number (Scheduler.request).
        self._requested: dict[int, _Requested] = {}
        self.scheduler = Scheduler(
            self.root, config.settle_ms / 1000, self._launch, on_state=self._on_state
        )
        self.watcher = Watcher(workspace, self._on_change, self._on_problem)
        # Told of every change the watcher reports, after the scheduler (an idle bench
        # stops at a save: daemon.bench.idle).
        self.on_change: Callable[[Project], None] | None = None
        # The state last published (a new project's scheduler starts idle).
        self._state = self.state
        self.stopped = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    @property
    def key(self) -> str:
        return str(self.root)

    @property
    def state(self) -> State:
        """One of protocol.STATES."""
        return "gone" if self.watcher.gone else self.scheduler.state

    def _on_state(self, _: str) -> None:
        # The watcher's `gone` hides the scheduler's state: the project's state is both.
        state = self.state
        if state != self._state:
            self._state = state
            event: ProjectState = {
                "event": protocol.PROJECT_STATE,
                "project": self.key,
                "state": state,
            }
            self.hub.publish(event)

    def _on_problem(self, message: str | None) -> None:
        self.problem = message
        if self.watcher.gone and self._build is not None:
            # The root moved away mid-build: nothing cargo still builds is the project's,
            # and what it writes by absolute path would recreate the old root.
            self._build.cancel()
        self._on_state(self.state)  # the watcher reports its root gone, or back, through here

    def _on_change(self, paths: list[str], unfinished: list[str]) -> None:
        if any(Path(p).name == "Cargo.toml" for p in paths):
            self._reload_soon = True
        self.scheduler.notify(paths, unfinished)
        if self.on_change is not None:
            self.on_change(self)

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            try:
                async with anyio.create_task_group() as tg:
                    # Beside the watch loop, not in it: a watcher's failure and restart
                    # does not take the developer's server down.
                    tg.start_soon(self.runner.run)
                    await self._watch(task_status)
            finally:
                self.stopped.set()

    async def _watch(self, task_status: anyio.abc.TaskStatus[None]) -> None:
        """The watcher and scheduler, restarted (with backoff) if a bug ends them."""
        backoff = 1.0
        initial_build = True
        announced = False
        while True:
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self.watcher.run)
                    await self.watcher.ready.wait()
                    if not announced:
                        announced = True
                        task_status.started()
                    tg.start_soon(self.scheduler.run, initial_build)
            except Exception as exc:
                # A bug or an unforeseen state in one project must not
                # take the daemon, or the other projects, down with it.
                log.exception("project_failed", root=self.key)
                self.problem = f"rbd hit an internal error ({exc!r}); see the log"
            initial_build = False
            await anyio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def stop(self) -> None:
        self.watcher.close()
        if self._scope is not None:
            self._scope.cancel()

    async def build_now(self) -> tuple[BuildSummary, str | None]:
        """Build now, as a save would (Scheduler.request: a running build is cancelled, a
        paused project builds after its bench); once the build that covers the request
        has ended, whatever its outcome, return its summary and first error.

        Raises ProjectError if the root is gone (now, or when the build was due),
        NotWatched if the project is stopped before that build ran, DaemonError if it
        could not run (a bug, logged by run()).
        """
        if self.watcher.gone:
            raise ProjectError(f"{self.key} is gone (moved or deleted): nothing to build")
        requested = _Requested()
        number = self.scheduler.request()
        self._requested[number] = requested
        try:
            async with anyio.create_task_group() as tg:

                async def on_stop() -> None:
                    await self.stopped.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(on_stop)
                await requested.done.wait()
                tg.cancel_scope.cancel()
        finally:
            # Asked for all the same: the build goes on without its waiter.
            self._requested.pop(number, None)
        if not requested.done.is_set():
            raise NotWatched(f"stopped watching {self.key} before the build ran")
        if requested.build is None:
            if self.watcher.gone or not self.root.is_dir():
                raise ProjectError(f"{self.key} is gone (moved or deleted): nothing to build")
            raise DaemonError(f"the build of {self.key} could not run; see the log")
        return requested.build, requested.first_error

    async def _launch(self, trigger: list[str], first_seen: float | None) -> None:
        """The scheduler's launch: a build, then the `rbd build`s it covers (those asked
        before it launched) told how it ended, even if it was cancelled or never ran."""
        covered = self.scheduler.covered
        before = self.last_build
        try:
            await self._run_build(trigger, first_seen)
        finally:
            # _finish made a new summary if (and only if) the build ran.
            ran = self.last_build if self.last_build is not before else None
            for number in [n for n in self._requested if n <= covered]:
                requested = self._requested.pop(number)
                requested.build = ran
                requested.first_error = self._first_error if ran is not None else None
                requested.done.set()

    async def _maybe_reload_workspace(self) -> None:
        # A manifest edit can add members or path dependencies: the watch set
        # follows. Done before the build it triggered, so that build's
        # changes to the plan are seen.
        if not self._reload_soon:
            return
        self._reload_soon = False
        try:
            workspace = await workspaces.load(
                self.root, self.env, cargo_version=self.workspace.cargo_version
            )
        except DaemonError as exc:
            log.warning("workspace_reload_failed", root=self.key, error=str(exc))
            return
        # Taken even when the packages stayed: its metadata error (or none) is
        # what `rbd status` shows.
        replan = workspace.package_dirs != self.workspace.package_dirs
        self.workspace = workspace
        if replan:
            self.watcher.replan(workspace)

    async def _run_build(self, trigger: list[str], first_seen: float | None) -> None:
        if not self.root.is_dir():
            return  # vanished: the watcher reports it, and there is nothing to build
        await self._maybe_reload_workspace()
        build_config = self.build_config
        argv = build_config.argv(self.config.argv())
        shim = await self.shims.get(self.env)
        user_wrapper = await anyio.to_thread.run_sync(
            cargo_config.rustc_wrapper, self.root, build_config.apply_env(self.env)
        )
        header = BuildHeader(self.key, now_iso(), tuple(trigger), tuple(argv), build_config.name)
        recording = await recorder.begin(self.store, self.hub, header)
        build = Build(
            argv,
            self.root,
            build_config.apply_env(self.env),
            self.config.timeout_s,
            recording.emit,
            cargo_version=self.workspace.cargo_version,
            on_spawn=lambda spawned: recording.started(spawned, first_seen),
            # Run mode: the new binary is complete once cargo succeeded.
            on_success=lambda built: self.runner.want(
                recording.build_id, built.result.executables, first_seen
            ),
            shim=shim,
            user_wrapper=user_wrapper,
        )
        self.current = recording
        self._build = build
        self.scheduler.current = build
        gathering = self.conditions.begin(
            self.root, argv, build_config.apply_env(self.env), self.config, build_config.name
        )
        result: BuildResult
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(recording.process_group, build)
                tg.start_soon(gathering.run, build.spawned)
                result = await build.run()
                result.kind = kinds.classify(
                    result.outcome,
                    result.units,
                    result.units_fresh,
                    self.workspace.members,
                    trigger,
                )
                result.conditions = await gathering.finish()
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            # The project is being stopped or the daemon shut down mid-build.
            with anyio.CancelScope(shield=True):
                stopped = await build.stop()
                stopped.conditions = gathering.conditions
                await self._finish(recording, stopped)
            raise
        await self._finish(recording, result)

    async def record_app(self, build_id: int | None, app: AppRun) -> None:
        """Run mode's restart after build build_id: stored with it, and shown in the
        project's last build (the runner's Record)."""
        if self.last_build is not None and self.last_build["id"] == build_id:
            self.last_build = {**self.last_build, "app": app}
        elif (
            build_id is not None and self.current is not None and self.current.build_id == build_id
        ):
            # The restart can end before the build's own record does (see _finish).
            self._app_early = (build_id, app)
        if build_id is None:
            return
        try:
            await self.store.write(self.store.sync.set_app, build_id, app)
        except StoreError as exc:
            log.error("store_failed", error=str(exc), root=self.key)

    async def _finish(self, recording: recorder.Recording, result: BuildResult) -> None:
        self.last_build = await recording.finish(result)
        early, self._app_early = self._app_early, None
        if early is not None and early[0] == self.last_build["id"]:
            self.last_build = {**self.last_build, "app": early[1]}
        self._first_error = result.first_error
        self.current = None
        self._build = None

    def update(
        self,
        env: dict[str, str],
        overrides: dict[str, Any],
        config: ProjectConfig,
        build_config: BuildConfig,
        run: RunSettings | None,
        listeners: Listeners | None,
    ) -> None:
        """New environment and settings for the next build. When run mode's settings
        changed (turned on, another bin or address...), a build is asked for, so the
        app starts, or restarts with them, without waiting for a save."""
        self.env = env
        self.overrides = overrides
        self.config = config
        self.build_config = build_config
        self.scheduler.settle_s = config.settle_ms / 1000
        changed = run != self.runner.settings or listeners is not self.runner.listeners
        self.runner.configure(run, env, listeners)
        if run is not None and changed:
            self.scheduler.request()

    def status(self) -> ProjectStatus:
        current: CurrentBuild | None = None
        if self.current is not None:
            current = self.current.to_json()
            if self._build is not None:
                current["progress"] = self._build.progress()
        return {
            "root": self.key,
            "state": self.state,
            "config": self.config.to_json(),
            "command": self.build_config.argv(self.config.argv()),
            # Where this configuration's binaries land (the one to run).
            "artifacts": str(self.build_config.artifacts() or self.workspace.target_dir / "debug"),
            "current": current,
            "last_build": self.last_build,
            "env": {
                k: v
                for k, v in sorted(self.env.items())
                if k in SHOWN_ENV or k.startswith(SHOWN_ENV_PREFIXES)
            },
            "watches": self.watcher.watch_count,
            # Polling once inotify failed (its watch limit): saves are noticed later.
            "polling": self.watcher.polling,
            "target_dir": str(self.workspace.target_dir),
            "problem": self.problem or self.workspace.metadata_error,
            "app": self.runner.status(),
        }
