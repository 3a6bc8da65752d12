"""A blocking connection to the daemon's socket (the client needs no event loop)."""

from __future__ import annotations

# The C socket module, not `socket`: socket.py's enum conversions of the constants and
# its selectors import were 2 ms of `rbd status`'s start (benchmarks/client_startup.py),
# and a connection needs none of what it adds (socket.socket subclasses this one).
import _socket
import itertools
import os
import time

from rbd.client.errors import (
    DaemonUnreachable,
    ProtocolError,
    ProtocolMismatch,
    RbdError,
    RequestFailed,
)
from rbd.contract import paths, protocol
from rbd.contract.peer import peer_credentials

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

CONNECT_TIMEOUT_S = 2.0
# A reply to an ordinary request: history of 100,000 builds stays well within.
REPLY_TIMEOUT_S = 60.0


class Connection:
    def __init__(self, sock: _socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        # Our own buffer, not sock.makefile(): a file object is unusable after
        # one read timed out, and `rbd tail` times out on purpose.
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        self.daemon: dict[str, Any] = {}

    @classmethod
    def open(cls, path: str | None = None) -> Connection:
        """Connect and say hello; DaemonUnreachable if nobody answers."""
        path = path or paths.socket_path()
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(
                f"no rbd daemon answers on {path} ({exc.strerror or exc}); "
                "`rbd start` in a Cargo project starts one"
            ) from None
        peer = peer_credentials(sock)
        if peer is not None and peer[1] != os.getuid():
            sock.close()
            # Whoever could put their socket there would get what we send (with
            # `rbd start`, our whole environment).
            raise RbdError(
                f"the socket {path} is served by a process of uid {peer[1]}, not by your "
                f"own rbd daemon (uid {os.getuid()}): refusing to talk to it"
            )
        connection = cls(sock, path)
        try:
            connection.daemon = connection.request(
                protocol.HELLO, protocol=protocol.PROTOCOL_VERSION
            )
        except RequestFailed as exc:
            pid = peer[0] if peer is not None else None
            connection.close()
            if exc.code == protocol.PROTOCOL_MISMATCH:
                raise ProtocolMismatch(str(exc), pid) from None
            raise
        except DaemonUnreachable:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, op: str, **args: Any) -> Any:
        request_id = next(self._ids)
        try:
            self.sock.sendall(protocol.encode({"op": op, "id": request_id, **args}))
        except OSError as exc:
            raise DaemonUnreachable(f"the daemon closed the connection ({exc})") from None
        return request_id

    def receive(self, timeout: float | None = REPLY_TIMEOUT_S) -> dict[str, Any]:
        message = self.poll(timeout)
        if message is None:
            raise DaemonUnreachable(f"the daemon did not answer within {timeout:g} s")
        return message

    def poll(self, timeout: float | None) -> dict[str, Any] | None:
        """The next message, or None if none came within timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > protocol.MAX_REPLY_BYTES:
                raise ProtocolError("the daemon sent an oversized message")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                return None
            except OSError as exc:
                raise DaemonUnreachable(f"lost the connection to the daemon ({exc})") from None
            if not chunk:
                raise DaemonUnreachable("the daemon closed the connection")
            self._buffer += chunk
        line = bytes(self._buffer[: end + 1])
        del self._buffer[: end + 1]
        return protocol.decode(line)

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a request and return its reply's results; RequestFailed if `ok` is false."""
        return self.reply_to(self.send(op, **args))

    def reply_to(
        self,
        request_id: Any,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = REPLY_TIMEOUT_S,
    ) -> dict[str, Any]:
        """The results of the reply to request_id, handing the events that come before it
        to on_event (dropped without one); RequestFailed if `ok` is false. timeout bounds
        the wait for each message; None waits as long as the request takes (a bench, a
        build), which Ctrl-C interrupts."""
        while True:
            reply = self.receive(timeout)
            if "event" in reply:
                if on_event is not None:
                    on_event(reply)
                continue
            if reply.get("id") not in (request_id, None):
                continue
            if reply.get("ok") is True:
                return reply
            error = reply.get("error") or {}
            raise RequestFailed(str(error.get("code", "unknown")), str(error.get("message", reply)))

    def events(self, tick_s: float | None = None) -> Iterator[dict[str, Any] | None]:
        """Events of a subscription as they come, until the daemon goes away; with
        tick_s, None whenever that long passes without one."""
        while True:
            message = self.poll(tick_s)
            if message is None or "event" in message:
                yield message
