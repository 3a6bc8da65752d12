"""The Unix-socket server: one task per connection, requests answered in order,
events of a subscription interleaved with the replies.

Nothing a client sends can take the daemon down: a malformed line gets an
error reply, an oversized one an error and a closed connection, a peer of
another uid `forbidden` and a closed connection; any unexpected exception
is logged and answered as `internal`.

Nor can a client hold the daemon's resources for ever:

- a connection must say hello within HELLO_TIMEOUT_S of connecting;
- a line, once begun, must be finished (its newline sent) within
  LINE_TIMEOUT_S; otherwise the connection gets a `bad_request` error and is
  closed. A greeted connection with no line begun may stay idle for as long
  as it likes (`rbd tail` does, for hours);
- at most MAX_CONNECTIONS connections are served at once; one more gets a
  `busy` error and is closed (within REFUSAL_LINGER_S), so that a flood of
  connections cannot exhaust the daemon's file descriptors (accept() failing
  would take the listener, and so the daemon, down). By default it is 256, or
  half the daemon's descriptor limit if that is lower (the other half is for
  the watchers, the store and cargo's pipes).

Each bound can be set by an environment variable of the daemon's process,
read once when the daemon starts (they exist so that tests need not wait
10 s); a value that is not valid refuses to start the daemon rather than
silently using the default:

    RBD_HELLO_TIMEOUT_S   seconds, MIN_TIMEOUT_S..MAX_TIMEOUT_S   (default 10)
    RBD_LINE_TIMEOUT_S    seconds, MIN_TIMEOUT_S..MAX_TIMEOUT_S   (default 10)
    RBD_MAX_CONNECTIONS   an integer, 1..MAX_MAX_CONNECTIONS
"""

from __future__ import annotations

import json
import math
import os
import resource
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream

from rbd.contract import protocol
from rbd.contract.errors import ProtocolError
from rbd.contract.peer import peer_credentials
from rbd.daemon.errors import ConfigError, DaemonError
from rbd.daemon.rpc import handlers
from rbd.daemon.rpc.events import Subscription

if TYPE_CHECKING:
    from rbd.daemon.app import Daemon

log = structlog.get_logger("server")

HELLO_TIMEOUT_ENV = "RBD_HELLO_TIMEOUT_S"
LINE_TIMEOUT_ENV = "RBD_LINE_TIMEOUT_S"
MAX_CONNECTIONS_ENV = "RBD_MAX_CONNECTIONS"
MIN_TIMEOUT_S = 0.05
MAX_TIMEOUT_S = 3600.0
# Each connection may buffer a line of up to MAX_REQUEST_BYTES: this many would be 64 GB.
MAX_MAX_CONNECTIONS = 65536
DEFAULT_MAX_CONNECTIONS = 256
SEND_TIMEOUT_S = 10.0
RECEIVE_BYTES = 1 << 16
# Requests are a few levels deep (an env, overrides); the limit keeps every reply
# encodable, an echoed id included: json recurses, and a request nested nearly as
# deep as it could decode would be a reply nested a level deeper than it can encode.
MAX_NESTING = 64


def _seconds(name: str, default: float, env: Mapping[str, str] | None = None) -> float:
    raw = (os.environ if env is None else env).get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds (got {raw!r})") from None
    if not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:  # NaN fails this too
        raise ConfigError(
            f"{name} must be between {MIN_TIMEOUT_S:g} and {MAX_TIMEOUT_S:g} (got {raw!r})"
        )
    return value


def default_max_connections() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft // 2))


def max_connections(env: Mapping[str, str] | None = None) -> int:
    """The connection cap the environment asks for (default: default_max_connections())."""
    raw = (os.environ if env is None else env).get(MAX_CONNECTIONS_ENV, "").strip()
    if not raw:
        return default_max_connections()
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{MAX_CONNECTIONS_ENV} must be an integer (got {raw!r})") from None
    if not 1 <= value <= MAX_MAX_CONNECTIONS:
        raise ConfigError(
            f"{MAX_CONNECTIONS_ENV} must be between 1 and {MAX_MAX_CONNECTIONS} (got {value})"
        )
    return value


# A client that has not said hello by then is gone or hostile.
HELLO_TIMEOUT_S = _seconds(HELLO_TIMEOUT_ENV, 10.0)
# A line begun and not finished by then: a slowloris, or a client that forgot the newline.
LINE_TIMEOUT_S = _seconds(LINE_TIMEOUT_ENV, 10.0)
MAX_CONNECTIONS = max_connections()

# Connections being served (one daemon per process). Refused ones are not counted.
_open_connections = 0
# A refused connection is told why, then kept until the client's first request
# arrives, for at most REFUSAL_LINGER_S: closed at once, it would meet that request
# with a reset, and the client report a broken pipe without reading why. Only this
# many linger at a time (the others are closed at once), so that the descriptors
# they hold stay within the budget too.
REFUSAL_LINGER_S = 1.0
MAX_LINGERING = max(1, MAX_CONNECTIONS // 8)
_lingering = 0
# Refusals since the last one logged: a flood must not flood the log as well.
_refused = 0
_refusal_logged_at = -math.inf
REFUSAL_LOG_INTERVAL_S = 60.0


class Connection:
    def __init__(self, daemon: Daemon, stream: SocketStream) -> None:
        self.daemon = daemon
        self.stream = stream
        # Received bytes not yet part of a line answered.
        self.buffer = bytearray()
        self.send_lock = anyio.Lock()
        self.subscription: Subscription | None = None
        self.closing = anyio.Event()
        self.tasks: anyio.abc.TaskGroup | None = None
        self.shutdown_after_reply = False

    async def send(self, message: dict[str, Any]) -> None:
        async with self.send_lock:
            with anyio.fail_after(SEND_TIMEOUT_S):
                await self.stream.send(_encode(message))


def _encode(message: dict[str, Any]) -> bytes:
    try:
        return protocol.encode(message)
    except UnicodeEncodeError:
        # A lone surrogate (JSON may carry "\ud800") in an echoed id or in a message
        # quoting a path: escaped, it is still JSON and decodes to the same string.
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"


async def handle(daemon: Daemon, stream: SocketStream) -> None:
    global _open_connections
    if _open_connections >= MAX_CONNECTIONS:
        await _refuse(stream)
        return
    _open_connections += 1
    try:
        await _handle(daemon, stream)
    finally:
        _open_connections -= 1


async def _refuse(stream: SocketStream) -> None:
    global _refused, _refusal_logged_at
    _refused += 1
    now = anyio.current_time()
    if now - _refusal_logged_at >= REFUSAL_LOG_INTERVAL_S:
        log.warning("connections_refused", refused=_refused, max_connections=MAX_CONNECTIONS)
        _refused, _refusal_logged_at = 0, now
    message = (
        f"too many connections to the daemon (it serves at most {MAX_CONNECTIONS}): "
        "try again when one of them has closed"
    )
    async with stream:
        await _say_and_close(stream, protocol.error(None, protocol.BUSY, message))


async def _say_and_close(stream: SocketStream, error: dict[str, Any]) -> None:
    """Send a refusal, then wait (briefly) for the client's first request before the
    caller closes: a client whose hello met a closed socket would see only a broken
    pipe, never the refusal."""
    global _lingering
    try:
        with anyio.move_on_after(REFUSAL_LINGER_S):
            await stream.send(protocol.encode(error))
            if _lingering < MAX_LINGERING:
                _lingering += 1
                try:
                    await stream.receive(RECEIVE_BYTES)
                finally:
                    _lingering -= 1
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
        pass


async def _handle(daemon: Daemon, stream: SocketStream) -> None:
    connection = Connection(daemon, stream)
    try:
        async with stream:
            raw = stream.extra(SocketAttribute.raw_socket)
            peer = peer_credentials(raw)
            uid = None if peer is None else peer[1]
            if uid is not None and uid != os.getuid():
                log.warning("peer_forbidden", uid=uid)
                message = "this daemon belongs to another user"
                await _say_and_close(stream, protocol.error(None, protocol.FORBIDDEN, message))
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


class _Unfinished(Exception):
    """A line was begun and not finished within LINE_TIMEOUT_S."""


async def _receive_line(connection: Connection, hello_deadline: float) -> bytes:
    """The next line, without its newline.

    Raises DelimiterNotFound if it is longer than MAX_REQUEST_BYTES, _Unfinished if
    it was begun and not finished in time, TimeoutError at hello_deadline, and
    EndOfStream if the client left (mid-line or not).
    """
    buffer = connection.buffer
    scanned = 0
    line_deadline = math.inf
    while True:
        end = buffer.find(b"\n", scanned)
        if end >= 0:
            if end > protocol.MAX_REQUEST_BYTES:
                raise anyio.DelimiterNotFound(protocol.MAX_REQUEST_BYTES)
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            return line
        if len(buffer) > protocol.MAX_REQUEST_BYTES:
            raise anyio.DelimiterNotFound(protocol.MAX_REQUEST_BYTES)
        scanned = len(buffer)
        if buffer and line_deadline == math.inf:
            # From when this line was first waited for, however its bytes trickle in.
            line_deadline = anyio.current_time() + LINE_TIMEOUT_S
        with anyio.CancelScope(deadline=min(line_deadline, hello_deadline)) as scope:
            chunk = await connection.stream.receive(RECEIVE_BYTES)
        if scope.cancelled_caught:
            if line_deadline <= hello_deadline:
                raise _Unfinished
            raise TimeoutError
        buffer += chunk


async def _serve_requests(connection: Connection) -> None:
    greeted = False
    hello_deadline = anyio.current_time() + HELLO_TIMEOUT_S
    try:
        while True:
            try:
                line = await _receive_line(connection, math.inf if greeted else hello_deadline)
            except anyio.DelimiterNotFound:
                await connection.send(
                    protocol.error(
                        None,
                        protocol.TOO_LARGE,
                        f"request line longer than {protocol.MAX_REQUEST_BYTES} bytes",
                    )
                )
                return
            except _Unfinished:
                message = f"request line not finished within {LINE_TIMEOUT_S:g} s"
                await connection.send(protocol.error(None, protocol.BAD_REQUEST, message))
                return
            except (anyio.EndOfStream, TimeoutError):
                return
            if not line.strip():
                continue
            reply, close = await _answer(connection, line, greeted)
            if reply.get("ok") and not greeted:
                greeted = True
            await connection.send(reply)
            if connection.shutdown_after_reply:
                connection.daemon.request_shutdown()
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
        request: dict[str, Any] | None = protocol.decode(line)
    except ProtocolError as exc:
        return protocol.error(None, protocol.BAD_REQUEST, str(exc)), False
    except RecursionError:
        request = None  # deeper than json itself can decode
    if request is None or _too_deep(request):
        message = f"request nested deeper than {MAX_NESTING} levels"
        return protocol.error(None, protocol.BAD_REQUEST, message), False
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
    handler = handlers.HANDLERS.get(op)
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


def _too_deep(value: Any) -> bool:
    # Level by level rather than recursively: recursion is what it guards against.
    level = [value]
    for _ in range(MAX_NESTING):
        level = [
            inner
            for outer in level
            if isinstance(outer, (dict, list))
            for inner in (outer.values() if isinstance(outer, dict) else outer)
        ]
        if not level:
            return False
    return True
