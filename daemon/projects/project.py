"""A watched project: its watcher, scheduler and builds, and the registry of all of them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import structlog

from rbd.contract import protocol
from rbd.daemon.advice import probe
from rbd.daemon.build import cargo_config, configurations, procs
from rbd.daemon.build.builder import Build
from rbd.daemon.build.records import BuildResult, summary
from rbd.daemon.build.shim import Shims
from rbd.daemon.errors import DaemonError, NotWatched, StoreError
from rbd.daemon.projects import settings as configuration
from rbd.daemon.projects import workspace as workspaces
from rbd.daemon.rpc.events import EventHub
from rbd.daemon.store.asyncstore import AsyncStore, Unsaved
from rbd.daemon.store.sqlite import now_iso
from rbd.daemon.watch.scheduler import Scheduler
from rbd.daemon.watch.watcher import Watcher

log = structlog.get_logger("projects")

# The environment variables `rbd status` shows: the ones that decide what cargo builds.
SHOWN_ENV_PREFIXES = ("CARGO", "RUST", "RBD_")
SHOWN_ENV = frozenset({"PATH", "CC", "CXX", "HOME"})


class Project:
    def __init__(
        self,
        workspace: workspaces.Workspace,
        env: dict[str, str],
        overrides: dict[str, Any],
        config: configuration.ProjectConfig,
        store: AsyncStore,
        hub: EventHub,
        shims: Shims,
        build_config: configurations.BuildConfig,
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
        self.problem: str | None = None
        # A manifest changed: re-read the workspace before the next build.
        self._reload_soon = False
        self.last_build: dict[str, Any] | None = None
        self.current: dict[str, Any] | None = None
        self._build: Build | None = None
        self.scheduler = Scheduler(self.root, config.settle_ms / 1000, self._run_build)
        self.watcher = Watcher(workspace, self._on_change, self._on_problem)
        self.stopped = anyio.Event()
        self._scope: anyio.CancelScope | None = None

    @property
    def key(self) -> str:
        return str(self.root)

    def _on_problem(self, message: str | None) -> None:
        self.problem = message

    def _on_change(self, paths: list[str]) -> None:
        if any(Path(p).name == "Cargo.toml" for p in paths):
            self._reload_soon = True
        self.scheduler.notify(paths)

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        with anyio.CancelScope() as scope:
            self._scope = scope
            try:
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
            finally:
                self.stopped.set()

    def stop(self) -> None:
        self.watcher.close()
        if self._scope is not None:
            self._scope.cancel()

    def _emit(self, event: dict[str, Any]) -> None:
        event.setdefault("project", self.key)
        if self.current is not None:
            event.setdefault("build_id", self.current["build_id"])
        self.hub.publish(event)

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
        argv = self.build_config.argv(self.config.argv())
        shim = await self.shims.get(self.env)
        user_wrapper = await anyio.to_thread.run_sync(
            cargo_config.rustc_wrapper, self.root, self.env
        )
        build = Build(
            argv,
            self.root,
            self.build_config.apply_env(self.env),
            self.config.timeout_s,
            self._emit,
            cargo_version=self.workspace.cargo_version,
            on_spawn=lambda spawned: self._announce(spawned, trigger, first_seen),
            shim=shim,
            user_wrapper=user_wrapper,
        )
        started_at = now_iso()
        build_id: int | None = None
        try:
            await self.store.flush()
            # Recorded before cargo runs, so that a daemon dying mid-build
            # leaves a row the next one marks `interrupted`.
            build_id = await self.store.write(
                self.store.sync.begin_build,
                project=self.key,
                started_at=started_at,
                trigger=trigger,
                command=argv,
                config=self.build_config.name,
            )
        except StoreError as exc:
            # Builds go on; this one waits in memory for the store (_finish).
            log.error("store_failed", error=str(exc), root=self.key)
        self.current = {
            "build_id": build_id,
            "started_at": started_at,
            "trigger": trigger,
            "command": argv,
        }
        self._build = build
        self.scheduler.current = build
        result: BuildResult
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._record_process_group, build, build_id)
                result = await build.run()
                tg.cancel_scope.cancel()
        except anyio.get_cancelled_exc_class():
            # The project is being stopped or the daemon shut down mid-build.
            with anyio.CancelScope(shield=True):
                build.cancel()
                if build.pgid is not None:
                    await procs.kill_group_and_wait(build.pgid)
                result = build.result
                result.outcome = "cancelled"
                result.wall_s = time.monotonic() - build.spawned_at
                await self._finish(build_id, started_at, trigger, argv, result)
            raise
        await self._finish(build_id, started_at, trigger, argv, result)

    def _announce(self, build: Build, trigger: list[str], first_seen: float | None) -> None:
        if first_seen is not None:
            build.result.settle_s = build.spawned_at - first_seen
        self._emit(
            {
                "event": protocol.BUILD_STARTED,
                "trigger": trigger,
                "command": build.argv,
                "started_at": self.current["started_at"] if self.current else None,
                "settle_s": build.result.settle_s,
                "spawned_at": build.spawned_wall_ns / 1e9,
            }
        )

    async def _record_process_group(self, build: Build, build_id: int | None) -> None:
        await build.spawned.wait()
        if build_id is not None and build.pgid is not None:
            try:
                await self.store.write(
                    self.store.sync.set_process_group, build_id, build.pgid, build.pg_start
                )
            except StoreError as exc:
                log.error("store_failed", error=str(exc), root=self.key)

    async def _finish(
        self,
        build_id: int | None,
        started_at: str,
        trigger: list[str],
        argv: list[str],
        result: BuildResult,
    ) -> None:
        saved = False
        if build_id is not None:
            try:
                await self.store.write(self.store.sync.finish_build, build_id, result)
                saved = True
            except StoreError as exc:
                log.error("store_failed", error=str(exc), root=self.key)
        if not saved:
            config = self.build_config.name
            self.store.keep(Unsaved(build_id, self.key, started_at, trigger, argv, config, result))
        build = summary(
            build_id=build_id,
            project=self.key,
            started_at=started_at,
            trigger=trigger,
            command=argv,
            config=self.build_config.name,
            outcome=result.outcome,
            wall_s=result.wall_s,
            settle_s=result.settle_s,
            errors=result.errors,
            warnings=result.warnings,
            units_rebuilt=result.units_rebuilt,
            units_fresh=result.units_fresh,
            linker=result.linker,
            phases=result.phases,
            rustc_wrapper=result.rustc_wrapper,
        )
        self.last_build = build
        log.info(
            "build_finished",
            root=self.key,
            build_id=build_id,
            outcome=result.outcome,
            wall_s=round(result.wall_s, 3),
            trigger=trigger[:20],
        )
        self._emit(
            {
                "event": protocol.BUILD_FINISHED,
                "build": build,
                "units": [unit.to_json() for unit in result.units],
                "first_error": result.first_error,
            }
        )
        self.current = None
        self._build = None

    def update(
        self,
        env: dict[str, str],
        overrides: dict[str, Any],
        config: configuration.ProjectConfig,
        build_config: configurations.BuildConfig,
    ) -> None:
        self.env = env
        self.overrides = overrides
        self.config = config
        self.build_config = build_config
        self.scheduler.settle_s = config.settle_ms / 1000

    def status(self) -> dict[str, Any]:
        current = None
        if self.current is not None:
            current = dict(self.current)
            if self._build is not None:
                current["progress"] = self._build.progress()
        return {
            "root": self.key,
            "state": "gone" if self.watcher.gone else self.scheduler.state,
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
        }


class Registry:
    """The watched projects, keyed by workspace root."""

    def __init__(
        self, store: AsyncStore, hub: EventHub, tg: anyio.abc.TaskGroup, shims: Shims
    ) -> None:
        self.store = store
        self.hub = hub
        self.shims = shims
        self._tg = tg
        self.projects: dict[str, Project] = {}

    def find(self, path: str | None) -> Project | None:
        """The watched project containing path (the innermost if nested)."""
        if not path:
            return None
        target = Path(path).resolve()
        best = None
        for project in self.projects.values():
            if target.is_relative_to(project.root) and (
                best is None or len(project.root.parts) > len(best.root.parts)
            ):
                best = project
        return best

    async def start(
        self, path: str, env: dict[str, str], overrides: dict[str, Any], persist: bool = True
    ) -> tuple[Project, bool]:
        """Watch the project at path; returns it and whether it was already watched."""
        workspace = await workspaces.load(Path(path).resolve(), env)
        config = configuration.load(workspace.root, env, overrides)
        build_config = await self._build_config(workspace, env, config.build_config)
        key = str(workspace.root)
        existing = self.projects.get(key)
        if existing is not None:
            # Watched already: the next build uses the new environment and
            # settings; the watch and any running build carry on.
            existing.update(env, overrides, config, build_config)
            await self._persist(key, env, overrides, persist)
            return existing, True
        project = Project(
            workspace, env, overrides, config, self.store, self.hub, self.shims, build_config
        )
        try:
            project.last_build = await self.store.call(self.store.sync.last_build, key)
        except StoreError:
            pass
        self.projects[key] = project
        await self._tg.start(project.run)
        await self._persist(key, env, overrides, persist)
        log.info("project_started", root=key, command=config.argv())
        return project, False

    async def _build_config(
        self, workspace: workspaces.Workspace, env: dict[str, str], name: str
    ) -> configurations.BuildConfig:
        """The named configuration, resolved for this machine; Unavailable if it lacks it."""
        if name == "default":
            return configurations.resolve(name, workspace.root, workspace.target_dir, env, "", None)
        found = await probe.probe(workspace.root, env)
        nightly = found.get("nightly") or {}
        return configurations.resolve(
            name,
            workspace.root,
            workspace.target_dir,
            env,
            str(found.get("host") or ""),
            nightly.get("toolchain") if nightly.get("cranelift") else None,
        ).require()

    async def _persist(
        self, key: str, env: dict[str, str], overrides: dict[str, Any], persist: bool
    ) -> None:
        # Remembered so that a restarted daemon (systemd, launchd, a crash)
        # watches the same projects with the same environment.
        if not persist:
            return
        try:
            await self.store.call(self.store.sync.save_project, key, env, overrides)
        except StoreError as exc:
            log.error("store_failed", error=str(exc), root=key)

    async def stop(self, key: str, forget: bool = True) -> None:
        project = self.projects.pop(key, None)
        if project is None:
            raise NotWatched(f"{key} is not watched by rbd")
        project.stop()
        await project.stopped.wait()
        if forget:
            try:
                await self.store.call(self.store.sync.remove_project, key)
            except StoreError as exc:
                log.error("store_failed", error=str(exc), root=key)
        log.info("project_stopped", root=key)
