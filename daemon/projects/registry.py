"""The watched projects, keyed by workspace root: started, found, updated and stopped.

What is watched is remembered in the store, with the environment and settings it was
started with, so that a restarted daemon (systemd, launchd, a crash) watches the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from rbd.daemon.build import configurations
from rbd.daemon.build.shim import Shims
from rbd.daemon.errors import NotWatched, StoreError
from rbd.daemon.projects import settings
from rbd.daemon.projects import workspace as workspaces
from rbd.daemon.projects.project import Project
from rbd.daemon.rpc.events import EventHub
from rbd.daemon.serve import output as serve_output
from rbd.daemon.serve.listen import Listeners
from rbd.daemon.serve.output import AppOutput
from rbd.daemon.serve.runner import RunSettings, settings_for
from rbd.daemon.store.asyncstore import AsyncStore

log = structlog.get_logger("projects")


def _run_settings(
    config: settings.ProjectConfig, workspace: workspaces.Workspace
) -> RunSettings | None:
    """Run mode's settings for the project, None when it is off; raises ConfigError
    when no bin can be chosen."""
    if not config.runs:
        return None
    return settings_for(
        config.run,
        workspace.bins,
        workspace.default_run,
        args=config.run_args,
        env=config.run_env,
        listen=config.listen,
        ready_url=config.ready_url,
        ready_pattern=config.ready_pattern,
        ready_timeout_s=config.ready_timeout_s,
        stop_timeout_s=config.stop_timeout_s,
    )


class Registry:
    """The watched projects, keyed by workspace root."""

    def __init__(
        self,
        store: AsyncStore,
        hub: EventHub,
        tg: anyio.abc.TaskGroup,
        shims: Shims,
        apps_dir: Path,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.hub = hub
        self.shims = shims
        # Where run mode keeps each project's app output (daemon.serve.output).
        self.apps_dir = apps_dir
        self._tg = tg
        self.projects: dict[str, Project] = {}
        # Called once a project is started, re-configured or stopped (the daemon's
        # exporters follow which projects name what).
        self._on_change = on_change or (lambda: None)

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
        """Watch the project at path; returns it and whether it was already watched.

        Raises what loading the workspace raises (ProjectError, CargoMissing), ConfigError
        for invalid settings, an unknown configuration, a bin run mode cannot choose or a
        listen address it cannot bind, Unavailable for a configuration this machine
        cannot build."""
        workspace = await workspaces.load(Path(path).resolve(), env)
        # Off the event loop: the user's manifest may be large (see tomlfile).
        config = await anyio.to_thread.run_sync(settings.load, workspace.root, env, overrides)
        build_config = await self._build_config(workspace, env, config.build_config)
        run = _run_settings(config, workspace)
        key = str(workspace.root)
        existing = self.projects.get(key)
        # Bound last, once nothing else can fail: a watched project keeps the sockets it
        # holds for the addresses it still names (its app never sees the port close).
        listeners = None
        if run is not None and config.listen:
            held = existing.runner.listeners if existing is not None else None
            if held is not None and held.addresses == config.listen:
                listeners = held
            else:
                listeners = Listeners(config.listen, reuse=held)
        if existing is not None:
            # Watched already: the next build uses the new environment and
            # settings; the watch and any running build carry on.
            existing.update(env, overrides, config, build_config, run, listeners)
            self._on_change()
            await self._persist(key, env, overrides, persist)
            return existing, True
        project = Project(
            workspace,
            env,
            overrides,
            config,
            self.store,
            self.hub,
            self.shims,
            build_config,
            AppOutput(serve_output.log_path(self.apps_dir, key)),
        )
        project.runner.configure(run, env, listeners)
        try:
            project.last_build = await self.store.call(self.store.sync.last_build, key)
        except StoreError:
            pass
        self.projects[key] = project
        # Before its first build can end.
        self._on_change()
        await self._tg.start(project.run)
        await self._persist(key, env, overrides, persist)
        log.info("project_started", root=key, command=config.argv())
        return project, False

    async def _build_config(
        self, workspace: workspaces.Workspace, env: dict[str, str], name: str
    ) -> configurations.BuildConfig:
        """The named configuration, resolved for this machine; Unavailable if it lacks it,
        ConfigError if no such configuration exists."""
        (config,) = await configurations.for_machine(
            [name], workspace.root, workspace.target_dir, env
        )
        return config.require()

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
        """Stop watching the project at key (its running build is killed); NotWatched if it
        is not watched. forget: also forget it in the store, so a restart does not resume it."""
        project = self.projects.pop(key, None)
        if project is None:
            raise NotWatched(f"{key} is not watched by rbd")
        project.stop()
        self._on_change()
        await project.stopped.wait()
        if forget:
            try:
                await self.store.call(self.store.sync.remove_project, key)
            except StoreError as exc:
                log.error("store_failed", error=str(exc), root=key)
        log.info("project_stopped", root=key)
