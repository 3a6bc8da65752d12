"""The Unix-socket server: one task per connection, requests answered in order,
events of a subscription interleaved with the replies.

Nothing a client sends can take the daemon down: a malformed line gets an
error reply, an oversized one an error and a closed connection, a peer of
another uid `forbidden` and a closed connection; any unexpected exception
is logged and answered as `internal`.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from client import protocol
from client.errors import ProtocolError
from daemon import advisor, bench, benchjob
from daemon.errors import DaemonError, NotFound, NotWatched
from daemon.events import Subscription
from daemon.runtime import peer_uid

if TYPE_CHECKING:
    from daemon.app import Daemon

log = structlog.get_logger("server")

# A client that has not said hello by then is gone or hostile.
HELLO_TIMEOUT_S = 10.0
SEND_TIMEOUT_S = 10.0

Handler = Callable[["Connection", dict[str, Any]], Awaitable[dict[str, Any]]]


class Connection:
    def __init__(self, daemon: Daemon, stream: SocketStream) -> None:
        self.daemon = daemon
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.send_lock = anyio.Lock()
        self.subscription: Subscription | None = None
        self.closing = anyio.Event()
        self.tasks: anyio.abc.TaskGroup | None = None

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            with anyio.fail_after(SEND_TIMEOUT_S):
                await self.stream.send(protocol.encode(message))


async def handle(daemon: Daemon, stream: SocketStream) -> None:
    connection = Connection(daemon, stream)
    try:
        async with stream:
            raw = stream.extra(SocketAttribute.raw_socket)
            uid = peer_uid(raw)
            if uid is not None and uid != os.getuid():
                log.warning("peer_forbidden", uid=uid)
                await connection.send(
                    protocol.error(None, protocol.FORBIDDEN, "this daemon belongs to another user")
                )
                return
            async with anyio.create_task_group() as tg:
                connection.tasks = tg
                tg.start_soon(_serve_requests, connection)
                await connection.closing.wait()
                tg.cancel_scope.cancel()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
        pass
    except Exception:
        # Whatever went wrong is this connection's problem, never the daemon's.
        log.exception("connection_failed")
    finally:
        if connection.subscription is not None:
            daemon.hub.unsubscribe(connection.subscription)


async def _serve_requests(connection: Connection) -> None:
    greeted = False
    try:
        while True:
            try:
                if greeted:
                    line = await connection.reader.receive_until(b"\n", protocol.MAX_REQUEST_BYTES)
                else:
                    with anyio.fail_after(HELLO_TIMEOUT_S):
                        line = await connection.reader.receive_until(
                            b"\n", protocol.MAX_REQUEST_BYTES
                        )
            except anyio.DelimiterNotFound:
                await connection.send(
                    protocol.error(
                        None,
                        protocol.TOO_LARGE,
                        f"request line longer than {protocol.MAX_REQUEST_BYTES} bytes",
                    )
                )
                return
            except (anyio.IncompleteRead, anyio.EndOfStream, TimeoutError):
                return
            if not line.strip():
                continue
            reply, close = await _answer(connection, line, greeted)
            if reply.get("ok") and not greeted:
                greeted = True
            await connection.send(reply)
            if close:
                return
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
        return  # the client left mid-reply
    finally:
        connection.closing.set()


async def _answer(
    connection: Connection, line: bytes, greeted: bool
) -> tuple[dict[str, Any], bool]:
    """The reply to one request line, and whether to close the connection after it."""
    try:
        request = protocol.decode(line)
    except ProtocolError as exc:
        return protocol.error(None, protocol.BAD_REQUEST, str(exc)), False
    request_id = request.get("id")
    op = request.get("op")
    if not isinstance(op, str):
        return protocol.error(request_id, protocol.BAD_REQUEST, 'missing "op"'), False
    if not greeted and op != protocol.HELLO:
        message = 'the first request must be {"op": "hello", "protocol": N}'
        return protocol.error(request_id, protocol.HELLO_REQUIRED, message), False
    if op == protocol.HELLO:
        version = request.get("protocol")
        if version != protocol.PROTOCOL_VERSION:
            # Phrased for the daemon's side: the client prints it as it is.
            message = protocol.mismatch_message(protocol.PROTOCOL_VERSION, version)
            return protocol.error(request_id, protocol.PROTOCOL_MISMATCH, message), True
        return protocol.ok(request_id, **connection.daemon.hello()), False
    handler = HANDLERS.get(op)
    if handler is None:
        known = ", ".join(sorted(protocol.OPS))
        return protocol.error(
            request_id, protocol.UNKNOWN_OP, f"unknown op {op!r} (known: {known})"
        ), False
    try:
        results = await handler(connection, request)
    except DaemonError as exc:
        return protocol.error(request_id, exc.code, str(exc)), False
    except (TypeError, ValueError, KeyError) as exc:
        return protocol.error(request_id, protocol.BAD_REQUEST, f"bad arguments: {exc}"), False
    except Exception as exc:
        log.exception("request_failed", op=op)
        return protocol.error(request_id, protocol.INTERNAL, f"{type(exc).__name__}: {exc}"), False
    return protocol.ok(request_id, **results), False


def _arg(request: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = request.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ValueError(f"{name!r} must be {kind.__name__}")
    return value


async def _status(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    return connection.daemon.status(_arg(request, "path", str))


async def _start(connection: Connection, request: dict[str, Any]) -> dict[str, Any]:
    path = _arg(request, "path", str)
    if path is None:
        raise ValueError("'path' is required")
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
    connection.daemon.request_shutdown()
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
        try:
            async for event in subscription.receive:
                await connection.send(event)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
            pass
        # The hub dropped a subscriber that stopped reading, or the client left.
        connection.closing.set()

    assert connection.tasks is not None
    connection.tasks.start_soon(forward)
    return {"project": project}


async def _advised_project(
    connection: Connection, request: dict[str, Any]
) -> tuple[str, dict[str, str]]:
    """The project a suggest/tune request is about, and the environment its builds use:
    a watched project's own, else (a project with recorded builds) the client's."""
    path = _arg(request, "path", str)
    project = connection.daemon.registry.find(path)
    if project is not None:
        return project.key, project.env
    root = await connection.daemon.resolve_known(path)
    if root is None:
        raise NotWatched(f"{path} is not a project rbd watches or has builds of (`rbd start`)")
    env = _arg(request, "env", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("'env' must map strings to strings")
    return root, env


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
    names = _arg(request, "configs", list)
    modes = _arg(request, "modes", list, list(bench.MODES))
    if not all(isinstance(n, str) for n in [*(names or []), *modes]):
        raise ValueError("'configs' and 'modes' must be lists of strings")
    env = _arg(request, "env", dict, {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("'env' must map strings to strings")
    options = bench.Options(
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
