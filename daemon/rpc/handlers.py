"""What each request does, once rbd.daemon.rpc.requests has checked its arguments.

A path in a request is canonicalized (symlinks, `..`) and must lie in a watched
project; `start` is the one request that makes a directory one, and `history`
also reads projects with recorded builds. So no request runs anything but what
a watched project's own configuration names (its cargo build, cargo's checks of
a tuning change, a bench of its configurations) and the toolchain probes.

Each handler takes the daemon's services, the client's connection and its
validated request, and returns the reply's results. What it raises is a
DaemonError, which the server answers with its code (StoreError: `store_error`);
anything else is a bug, answered `internal` and logged.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio

from rbd.contract import protocol
from rbd.contract.schema import (
    AppLogReply,
    AppLogRequest,
    BenchCancelReply,
    BenchCancelRequest,
    BenchReply,
    BenchRequest,
    BuildReply,
    BuildRequest,
    HelloReply,
    HistoryReply,
    HistoryRequest,
    ProjectStatus,
    ShowReply,
    ShowRequest,
    ShutdownReply,
    ShutdownRequest,
    StartReply,
    StartRequest,
    StatusReply,
    StatusRequest,
    StopReply,
    StopRequest,
    SubscribeReply,
    SubscribeRequest,
    SuggestReply,
    SuggestRequest,
    TuneApplyReply,
    TuneApplyRequest,
    TuneRevertReply,
    TuneRevertRequest,
)
from rbd.daemon.advice import advisor, steps
from rbd.daemon.bench import runner
from rbd.daemon.errors import BadRequest, ConfigError, NotFound, NotWatched, ProjectError
from rbd.daemon.projects.project import Project
from rbd.daemon.rpc.connection import Connection
from rbd.daemon.serve import output
from rbd.daemon.services import DaemonInfo, Services

# The request is the TypedDict of its op (schema.REQUESTS), as requests.parse made it.
Handler = Callable[[Services, Connection, Any], Awaitable[Mapping[str, Any]]]


def hello(info: DaemonInfo) -> HelloReply:
    return {"protocol": info.protocol, "version": info.version, "pid": info.pid}


def _check_project_path(path: str) -> None:
    """A project to build (start, bench) must be at a path this process can look at.

    Raises ProjectError if it cannot.
    """
    try:
        Path(path).is_dir()
    except OSError as exc:
        # pathlib answers False for a path that is missing but raises for one too long
        # or not searchable, which would surface as `internal`: unusable all the same.
        raise ProjectError(f"{path} is not a usable directory: {exc.strerror}") from None


def _watched(services: Services, path: str | None) -> str:
    """The root of the watched project containing path. Raises NotWatched."""
    project = services.registry.find(path)
    if project is None:
        raise NotWatched(f"{path} is not inside a project rbd watches (see `rbd status`)")
    return project.key


async def _known(services: Services, path: str | None) -> str | None:
    """The project (watched now, or with recorded builds) containing path, if any.

    Raises StoreError.
    """
    project = services.registry.find(path)
    if project is not None or not path:
        return None if project is None else project.key
    target = Path(path).resolve()
    known = await services.store.call(services.store.sync.known_projects)
    inside = [root for root in known if target.is_relative_to(root)]
    return max(inside, key=len) if inside else None


async def _status(
    services: Services, connection: Connection, request: StatusRequest
) -> StatusReply:
    """Raises nothing."""
    path = request.get("path")
    projects = list(services.registry.projects.values())
    if path is not None:
        found = services.registry.find(path)
        projects = [found] if found is not None else []
    info, store = services.info, services.store
    return {
        "daemon": {
            "pid": info.pid,
            "version": info.version,
            "protocol": info.protocol,
            "uptime_s": round(time.monotonic() - info.started, 3),
            "socket": info.socket,
            "log": info.log,
            "store": str(store.sync.path),
            "store_error": store.error,
            # Finished builds waiting in memory for a failing store.
            "unsaved_builds": len(store.unsaved),
            # Dropped, oldest first, once more than MAX_UNSAVED waited.
            "lost_builds": store.dropped,
            "subscribers": len(services.hub),
        },
        "projects": [_with_bench(services, project.status()) for project in projects],
    }


def _with_bench(services: Services, status: ProjectStatus) -> ProjectStatus:
    """A project's status with its running bench, if any: while one runs the project
    is `paused`, for as long as 25 minutes on a real app. Raises nothing."""
    job = services.benches.running
    status["bench"] = job.bench.status() if job is not None and job.root == status["root"] else None
    return status


async def _start(services: Services, connection: Connection, request: StartRequest) -> StartReply:
    """Raises ProjectError (CargoMissing) for a path that is no usable Cargo project,
    ConfigError for invalid settings or overrides, Unavailable for a build
    configuration this machine lacks."""
    path = request["path"]
    _check_project_path(path)
    project, already = await services.registry.start(path, request["env"], request["overrides"])
    return {"project": project.status(), "already": already}


async def _stop(services: Services, connection: Connection, request: StopRequest) -> StopReply:
    """Raises NotWatched."""
    root = _watched(services, request["path"])
    await services.registry.stop(root)
    return {"root": root}


async def _shutdown(
    services: Services, connection: Connection, request: ShutdownRequest
) -> ShutdownReply:
    """Raises nothing."""
    # Once the reply is sent: an idle daemon would otherwise be gone before it.
    connection.shutdown_after_reply = True
    return {"pid": os.getpid()}


async def _history(
    services: Services, connection: Connection, request: HistoryRequest
) -> HistoryReply:
    """Raises StoreError."""
    project = None
    if not request["all"]:
        project = await _known(services, request.get("path"))
    builds = await services.store.call(services.store.sync.history, project, request["limit"])
    # Each project's trend over its own latest edit rebuilds, whatever the limit.
    roots = [project] if project else list(dict.fromkeys(b["project"] for b in builds))
    trends = await steps.trends(services.store, roots)
    return {
        "project": project,
        "builds": builds,
        "trend": trends.get(project) if project else None,
        "trends": trends,
    }


async def _show(services: Services, connection: Connection, request: ShowRequest) -> ShowReply:
    """Raises NotFound, StoreError."""
    build_id = request["build_id"]
    build = await services.store.call(services.store.sync.build, build_id)
    if build is None:
        raise NotFound(f"no finished build with id {build_id}")
    return {"build": build}


async def _subscribe(
    services: Services, connection: Connection, request: SubscribeRequest
) -> SubscribeReply:
    """Raises BadRequest if this connection subscribed already, NotWatched for a
    path in no watched project."""
    if connection.subscription is not None:
        raise BadRequest("bad arguments: already subscribed")
    path = request.get("path")
    project = _watched(services, path) if path else None
    subscription = services.hub.subscribe(project)
    connection.subscription = subscription

    async def forward() -> None:
        async with anyio.create_task_group() as tg:

            async def on_drop() -> None:
                # Dropped for not reading: closed now, not when a send times out.
                await subscription.dropped.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(on_drop)
            try:
                async for event in subscription.receive:
                    await connection.send(event)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
                pass
            tg.cancel_scope.cancel()
        # The hub dropped a subscriber that stopped reading, or the client left.
        connection.closing.set()

    connection.tasks.start_soon(forward)
    return {"project": project}


def _advised_project(services: Services, path: str) -> Project:
    """The watched project a suggest/tune request is about. Raises NotWatched."""
    project = services.registry.find(path)
    if project is None:
        # Suggestions probe the toolchain and a tuning change runs cargo's
        # check: only in a project its user chose to watch.
        raise NotWatched(f"{path} is not inside a project rbd watches (`rbd start` it first)")
    return project


async def _suggest(
    services: Services, connection: Connection, request: SuggestRequest
) -> SuggestReply:
    """Raises NotWatched, StoreError."""
    project = _advised_project(services, request["path"])
    return await advisor.suggestions(services.store, project.key, project.env, project.overrides)


async def _tune_apply(
    services: Services, connection: Connection, request: TuneApplyRequest
) -> TuneApplyReply:
    """Raises NotWatched, NotFound (no such current suggestion), ConfigError (a
    change to make by hand, or TuneRejected: one cargo refuses), StoreError."""
    project = _advised_project(services, request["path"])
    async with services.tuning:
        applied = await advisor.apply(
            services.store,
            project.key,
            project.env,
            request["ids"],
            request["dry_run"],
            project.overrides,
        )
    return applied


async def _tune_revert(
    services: Services, connection: Connection, request: TuneRevertRequest
) -> TuneRevertReply:
    """Raises NotWatched, NotFound (no such tune, or reverted already),
    TuneConflict (a tuned file changed since), StoreError."""
    project = _advised_project(services, request["path"])
    async with services.tuning:
        reverted = await advisor.revert(
            services.store, project.key, request.get("tune_id"), request["force"]
        )
    return reverted


async def _bench(services: Services, connection: Connection, request: BenchRequest) -> BenchReply:
    """Raises ProjectError for a path that is no usable directory, ConfigError for
    options out of range, and what Benches.start raises."""
    path = request["path"]
    _check_project_path(path)
    configs = request.get("configs")
    options = runner.Options(
        configs=tuple(configs) if configs is not None else None,
        runs=request["runs"],
        warmup=request["warmup"],
        modes=tuple(request["modes"]),
        edit=request.get("edit"),
    ).check()
    return await services.benches.start(path, options, request["detach"])


async def _bench_cancel(
    services: Services, connection: Connection, request: BenchCancelRequest
) -> BenchCancelReply:
    """Raises nothing."""
    return services.benches.cancel(request.get("path"))


async def _build(services: Services, connection: Connection, request: BuildRequest) -> BuildReply:
    """Build the watched project now, as a save would, and answer once that build has
    ended (whatever its outcome: a failed build is a reply, not an error).

    Raises NotWatched for a path in no watched project (or a project stopped before the
    build ran), ProjectError if its root is gone, DaemonError if the build could not
    run (Project.build_now)."""
    path = request["path"]
    project = services.registry.find(path)
    if project is None:
        raise NotWatched(f"{path} is not inside a project rbd watches (`rbd start` it first)")
    build, first_error = await project.build_now()
    return {"project": project.key, "build": build, "first_error": first_error}


async def _app_log(
    services: Services, connection: Connection, request: AppLogRequest
) -> AppLogReply:
    """The last lines of the watched project's app output (run mode).

    Raises NotWatched for a path in no watched project, BadRequest for a count out of
    range, ConfigError when run mode is off and never ran there."""
    count = request.get("lines", 200)
    if not 1 <= count <= output.MAX_TAIL_LINES:
        raise BadRequest(f"lines must be from 1 to {output.MAX_TAIL_LINES}")
    path = request["path"]
    project = services.registry.find(path)
    if project is None:
        raise NotWatched(f"{path} is not inside a project rbd watches (`rbd start` it first)")
    app_output = project.runner.output
    lines = await anyio.to_thread.run_sync(output.tail, app_output.path, count)
    if lines is None:
        if not project.runner.enabled:
            raise ConfigError(
                f"run mode is off for {project.key}: `rbd start --run` runs its server"
            )
        lines = []
    return {"project": project.key, "log": str(app_output.path), "lines": lines}


HANDLERS: dict[str, Handler] = {
    protocol.APP_LOG: _app_log,
    protocol.BENCH: _bench,
    protocol.BENCH_CANCEL: _bench_cancel,
    protocol.BUILD: _build,
    protocol.SUGGEST: _suggest,
    protocol.TUNE_APPLY: _tune_apply,
    protocol.TUNE_REVERT: _tune_revert,
    protocol.STATUS: _status,
    protocol.START: _start,
    protocol.STOP: _stop,
    protocol.SHUTDOWN: _shutdown,
    protocol.HISTORY: _history,
    protocol.SHOW: _show,
    protocol.SUBSCRIBE: _subscribe,
}
