"""The Unix-socket server: one task per connection, requests answered in order,
events of a subscription interleaved with the replies.

Nothing a client sends can take the daemon down: a malformed line gets an
error reply, an oversized one an error and a closed connection, a peer of
another uid `forbidden` and a closed connection. A request's arguments are
checked in one place (rbd.daemon.rpc.requests, `bad_request`); a DaemonError
from a handler is answered with its code; any other exception is a bug in the
daemon, logged with its traceback and answered as `internal`.

Nor can a client hold the daemon's resources for ever (the bounds are the
daemon's tunables, rbd.daemon.tunables):

- a connection must say hello within `hello_timeout_s` of connecting;
- a line, once begun, must be finished (its newline sent) within
  `line_timeout_s`; otherwise the connection gets a `bad_request` error and is
  closed. A greeted connection with no line begun may stay idle for as long
  as it likes (`rbd tail` does, for hours);
- at most `max_connections` connections are served at once; one more gets a
  `busy` error and is closed (within REFUSAL_LINGER_S), so that a flood of
  connections cannot exhaust the daemon's file descriptors (accept() failing
  would take the listener, and so the daemon, down).
"""

from __future__ import annotations

import math
import os
from typing import Any

import anyio
import structlog
from anyio.abc import SocketAttribute, SocketStream

from rbd.contract import protocol
from rbd.contract.errors import ProtocolError
from rbd.contract.peer import peer_credentials
from rbd.daemon.errors import DaemonError
from rbd.daemon.rpc import handlers, requests
from rbd.daemon.rpc.connection import Connection
from rbd.daemon.services import Services
from rbd.daemon.tunables import Tunables

log = structlog.get_logger("server")

RECEIVE_BYTES = 1 << 16
# Requests are a few levels deep (an env, overrides); the limit keeps every reply
# encodable, an echoed id included: json recurses, and a request nested nearly as
# deep as it could decode would be a reply nested a level deeper than it can encode.
MAX_NESTING = 64


# A refused connection is told why, then kept until the client's first request
# arrives, for at most REFUSAL_LINGER_S: closed at once, it would meet that request
# with a reset, and the client report a broken pipe without reading why. Only
# max_connections // 8 linger at a time (the others are closed at once), so that
# the descriptors they hold stay within the budget too.
REFUSAL_LINGER_S = 1.0
REFUSAL_LOG_INTERVAL_S = 60.0


class _Unfinished(Exception):
    """A line was begun and not finished within the line timeout."""


class Server:
    """The daemon's connections: serves each one it accepts, within the tunables' bounds."""

    def __init__(self, services: Services, tunables: Tunables) -> None:
        self.services = services
        self.tunables = tunables
        # Connections being served. Refused ones are not counted.
        self.open_connections = 0
        self.max_lingering = max(1, tunables.max_connections // 8)
        self._lingering = 0
        # Refusals since the last one logged: a flood must not flood the log as well.
        self._refused = 0
        self._refusal_logged_at = -math.inf

    async def handle(self, stream: SocketStream) -> None:
        """Serve one accepted connection until either side closes it. Raises nothing."""
        if self.open_connections >= self.tunables.max_connections:
            await self._refuse(stream)
            return
        self.open_connections += 1
        try:
            await self._handle(stream)
        finally:
            self.open_connections -= 1

    async def _refuse(self, stream: SocketStream) -> None:
        cap = self.tunables.max_connections
        self._refused += 1
        now = anyio.current_time()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning("connections_refused", refused=self._refused, max_connections=cap)
            self._refused, self._refusal_logged_at = 0, now
        message = (
            f"too many connections to the daemon (it serves at most {cap}): "
            "try again when one of them has closed"
        )
        async with stream:
            await self._say_and_close(stream, protocol.error(None, protocol.BUSY, message))

    async def _say_and_close(self, stream: SocketStream, error: dict[str, Any]) -> None:
        """Send a refusal, then wait (briefly) for the client's first request before the
        caller closes: a client whose hello met a closed socket would see only a broken
        pipe, never the refusal."""
        try:
            with anyio.move_on_after(REFUSAL_LINGER_S):
                await stream.send(protocol.encode(error))
                if self._lingering < self.max_lingering:
                    self._lingering += 1
                    try:
                        await stream.receive(RECEIVE_BYTES)
                    finally:
                        self._lingering -= 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, OSError):
            pass

    async def _handle(self, stream: SocketStream) -> None:
        try:
            async with stream:
                raw = stream.extra(SocketAttribute.raw_socket)
                peer = peer_credentials(raw)
                uid = None if peer is None else peer[1]
                if uid is not None and uid != os.getuid():
                    log.warning("peer_forbidden", uid=uid)
                    message = "this daemon belongs to another user"
                    error = protocol.error(None, protocol.FORBIDDEN, message)
                    await self._say_and_close(stream, error)
                    return
                async with anyio.create_task_group() as tg:
                    connection = Connection(stream, tg)
                    try:
                        tg.start_soon(self._serve_requests, connection)
                        await connection.closing.wait()
                        tg.cancel_scope.cancel()
                    finally:
                        if connection.subscription is not None:
                            self.services.hub.unsubscribe(connection.subscription)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
            pass
        except Exception:
            # Whatever went wrong is this connection's problem, never the daemon's.
            log.exception("connection_failed")

    async def _receive_line(self, connection: Connection, hello_deadline: float) -> bytes:
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
                line_deadline = anyio.current_time() + self.tunables.line_timeout_s
            with anyio.CancelScope(deadline=min(line_deadline, hello_deadline)) as scope:
                chunk = await connection.stream.receive(RECEIVE_BYTES)
            if scope.cancelled_caught:
                if line_deadline <= hello_deadline:
                    raise _Unfinished
                raise TimeoutError
            buffer += chunk

    async def _serve_requests(self, connection: Connection) -> None:
        greeted = False
        hello_deadline = anyio.current_time() + self.tunables.hello_timeout_s
        try:
            while True:
                try:
                    deadline = math.inf if greeted else hello_deadline
                    line = await self._receive_line(connection, deadline)
                except anyio.DelimiterNotFound:
                    message = f"request line longer than {protocol.MAX_REQUEST_BYTES} bytes"
                    await connection.send(protocol.error(None, protocol.TOO_LARGE, message))
                    return
                except _Unfinished:
                    message = f"request line not finished within {self.tunables.line_timeout_s:g} s"
                    await connection.send(protocol.error(None, protocol.BAD_REQUEST, message))
                    return
                except (anyio.EndOfStream, TimeoutError):
                    return
                if not line.strip():
                    continue
                reply, close = await self._answer(connection, line, greeted)
                if reply.get("ok") and not greeted:
                    greeted = True
                await connection.send(reply)
                if connection.shutdown_after_reply:
                    self.services.request_shutdown()
                if close:
                    return
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError, OSError):
            return  # the client left mid-reply
        finally:
            connection.closing.set()

    async def _answer(
        self, connection: Connection, line: bytes, greeted: bool
    ) -> tuple[dict[str, Any], bool]:
        """The reply to one request line, and whether to close the connection after it."""
        try:
            message: dict[str, Any] | None = protocol.decode(line)
        except ProtocolError as exc:
            return protocol.error(None, protocol.BAD_REQUEST, str(exc)), False
        except RecursionError:
            message = None  # deeper than json itself can decode
        if message is None or _too_deep(message):
            text = f"request nested deeper than {MAX_NESTING} levels"
            return protocol.error(None, protocol.BAD_REQUEST, text), False
        request_id = message.get("id")
        op = message.get("op")
        if not isinstance(op, str):
            return protocol.error(request_id, protocol.BAD_REQUEST, 'missing "op"'), False
        if not greeted and op != protocol.HELLO:
            text = 'the first request must be {"op": "hello", "protocol": N}'
            return protocol.error(request_id, protocol.HELLO_REQUIRED, text), False
        if op == protocol.HELLO:
            version = message.get("protocol")
            if version != protocol.PROTOCOL_VERSION:
                # Phrased for the daemon's side: the client prints it as it is.
                text = protocol.mismatch_message(protocol.PROTOCOL_VERSION, version)
                return protocol.error(request_id, protocol.PROTOCOL_MISMATCH, text), True
            return protocol.ok(request_id, **handlers.hello(self.services.info)), False
        handler = handlers.HANDLERS.get(op)
        if handler is None:
            known = ", ".join(sorted(protocol.OPS))
            text = f"unknown op {op!r} (known: {known})"
            return protocol.error(request_id, protocol.UNKNOWN_OP, text), False
        try:
            request = requests.parse(op, message)
            results = await handler(self.services, connection, request)
        except DaemonError as exc:
            # The client's mistake (BadRequest), or what the daemon could not do for it.
            return protocol.error(request_id, exc.code, str(exc)), False
        except Exception as exc:
            # A bug in the daemon, whatever the request: never blamed on the client.
            log.exception("request_failed", op=op)
            text = f"{type(exc).__name__}: {exc}"
            return protocol.error(request_id, protocol.INTERNAL, text), False
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
