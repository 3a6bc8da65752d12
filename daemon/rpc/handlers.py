"""What each request does: its arguments checked, then the daemon asked.

A path in a request is canonicalized (symlinks, `..`) and must lie in a watched
project; `start` is the one request that makes a directory one, and `history`
also reads projects with recorded builds. So no request runs anything but what
a watched project's own configuration names (its cargo build, cargo's checks of
a tuning change, a bench of its configurations) and the toolchain probes.
Arguments of the wrong type are ValueError, which the server answers as
`bad_request`.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from rbd.contract import protocol
from rbd.daemon.advice import advisor
from rbd.daemon.bench import job as benchjob
from rbd.daemon.bench import runner
from rbd.daemon.errors import NotFound, NotWatched, ProjectError

if TYPE_CHECKING:
    from rbd.daemon.rpc.server import Connection

Handler = Callable[["Connection", dict[str, Any]], Awaitable[dict[str, Any]]]

# Integers the store can hold (SQLite's are 64-bit); a larger one is a bad argument,
# not an OverflowError deep in the store.
MIN_INT = -(1 << 63)
MAX_INT = (1 << 63) - 1


def _arg(request: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = request.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{name!r} must be {kind.__name__}")
    if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
        raise ValueError(f"{name!r} is out of range")
    return value


def _check_project_path(path: str) -> None:
    """A project to build (start, bench) must be at a path this process can look at."""
    try:
        Path(path).is_dir()
    except OSError as exc:
        # pathlib answers False for a path that is missing but raises for one too long
        # or not searchable, which would surface as `internal`: unusable all the same.
        raise ProjectError(f"{path} is not a usable directory: {exc.strerror}") from None


async def _status(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    return connection.daemon.status(_arg(request, "path", str))


async def _start(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    path = _arg(request, "path", str)
    if path is None:
        raise ValueError("'path' is required")
    _check_project_path(path)
    env = _arg(request, "env", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("'env' must map strings to strings")
    overrides = _arg(request, "overrides", dict, {})
    project, already = await connection.daemon.registry.start(path, env, overrides)
    return {"project": project.status(), "already": already}


async def _stop(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    root = connection.daemon.resolve_watched(_arg(request, "path", str))
    await connection.daemon.registry.stop(root)
    return {"root": root}


async def _shutdown(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    # Once the reply is sent: an idle daemon would otherwise be gone before it.
    connection.shutdown_after_reply = True
    return {"pid": os.getpid()}


async def _history(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    limit = _arg(request, "limit", int, 20)
    if limit < 1:
        raise ValueError("'limit' must be at least 1")
    project = None
    if not _arg(request, "all", bool, False):
        project = await connection.daemon.resolve_known(_arg(request, "path", str))
    builds = await connection.daemon.store.call(
        connection.daemon.store.sync.history, project, limit
    )
    return {"project": project, "builds": builds}


async def _show(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    build_id = _arg(request, "build_id", int)
    if build_id is None:
        raise ValueError("'build_id' is required")
    build = await connection.daemon.store.call(connection.daemon.store.sync.build, build_id)
    if build is None:
        raise NotFound(f"no finished build with id {build_id}")
    return {"build": build}


async def _subscribe(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    if connection.subscription is not None:
        raise ValueError("already subscribed")
    path = _arg(request, "path", str)
    project = connection.daemon.resolve_watched(path) if path else None
    subscription = connection.daemon.hub.subscribe(project)
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

    assert connection.tasks is not None
    connection.tasks.start_soon(forward)
    return {"project": project}


async def _advised_project(
    connection: Connection, request: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """The watched project a suggest/tune request is about, and its environment."""
    project = connection.daemon.registry.find(_arg(request, "path", str))
    if project is None:
        # Suggestions probe the toolchain and a tuning change runs cargo's
        # check: only in a project its user chose to watch.
        raise NotWatched(
            f"{request.get('path')} is not inside a project rbd watches (`rbd start` it first)"
        )
    return project.key, project.env


async def _suggest(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    root, env = await _advised_project(connection, request)
    return await advisor.suggestions(connection.daemon.store, root, env)


async def _tune_apply(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    root, env = await _advised_project(connection, request)
    ids = _arg(request, "ids", list, [])
    if not all(isinstance(i, str) for i in ids):
        raise ValueError("'ids' must be a list of strings")
    dry_run = _arg(request, "dry_run", bool, False)
    return await advisor.apply(connection.daemon.store, root, env, ids, dry_run)


async def _tune_revert(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    root, _ = await _advised_project(connection, request)
    tune_id = _arg(request, "tune_id", int)
    force = _arg(request, "force", bool, False)
    return await advisor.revert(connection.daemon.store, root, tune_id, force)


async def _bench(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    path = _arg(request, "path", str)
    if path is None or not path.startswith("/"):
        raise ValueError("'path' must be an absolute path")
    _check_project_path(path)
    names = _arg(request, "configs", list)
    modes = _arg(request, "modes", list, list(runner.MODES))
    if not all(isinstance(n, str) for n in [*(names or []), *modes]):
        raise ValueError("'configs' and 'modes' must be lists of strings")
    env = _arg(request, "env", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("'env' must map strings to strings")
    options = runner.Options(
        configs=tuple(names) if names is not None else None,
        runs=_arg(request, "runs", int, 6),
        warmup=_arg(request, "warmup", int, 2),
        modes=tuple(modes),
        edit=_arg(request, "edit", str),
    ).check()
    detach = _arg(request, "detach", bool, False)
    return await benchjob.start(connection.daemon, path, env, options, detach)


async def _bench_cancel(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    return benchjob.cancel(connection.daemon, _arg(request, "path", str))


HANDLERS: dict[str, Handler] = {
    protocol.BENCH: _bench,
    protocol.BENCH_CANCEL: _bench_cancel,
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
