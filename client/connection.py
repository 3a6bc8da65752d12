"""A blocking connection to the daemon's socket (the client needs no event loop)."""

from __future__ import annotations

import itertools
import socket

from client import paths, protocol
from client.errors import DaemonUnreachable, ProtocolError, ProtocolMismatch, RequestFailed

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

CONNECT_TIMEOUT_S = 2.0
# A reply to an ordinary request: history of 100,000 builds stays well within.
REPLY_TIMEOUT_S = 60.0


class Connection:
    def __init__(self, sock: socket.socket, path: str) -> None:
        self.sock = sock
        self.path = path
        self._reader = sock.makefile("rb")
        self._ids = itertools.count(1)
        self.daemon: dict[str, Any] = {}

    @classmethod
    def open(cls, path: str | None = None) -> Connection:
        """Connect and say hello; DaemonUnreachable if nobody answers."""
        path = path or paths.socket_path()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(CONNECT_TIMEOUT_S)
        try:
            sock.connect(path)
        except OSError as exc:
            sock.close()
            raise DaemonUnreachable(
                f"no rbd daemon answers on {path} ({exc.strerror or exc}); "
                "`rbd start` in a Cargo project starts one"
            ) from None
        connection = cls(sock, path)
        try:
            connection.daemon = connection.request(
                protocol.HELLO, protocol=protocol.PROTOCOL_VERSION
            )
        except RequestFailed as exc:
            connection.close()
            if exc.code == protocol.PROTOCOL_MISMATCH:
                raise ProtocolMismatch(str(exc)) from None
            raise
        except DaemonUnreachable:
            connection.close()
            raise
        return connection

    def close(self) -> None:
        self._reader.close()
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
        self.sock.settimeout(timeout)
        try:
            line = self._reader.readline(protocol.MAX_REPLY_BYTES)
        except TimeoutError:
            raise DaemonUnreachable(f"the daemon did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise DaemonUnreachable(f"lost the connection to the daemon ({exc})") from None
        if not line:
            raise DaemonUnreachable("the daemon closed the connection")
        if not line.endswith(b"\n"):
            raise ProtocolError("the daemon sent an oversized or truncated message")
        return protocol.decode(line)

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a request and return its reply's results; RequestFailed if `ok` is false."""
        request_id = self.send(op, **args)
        while True:
            reply = self.receive()
            if "event" in reply:
                continue
            if reply.get("id") not in (request_id, None):
                continue
            if reply.get("ok") is True:
                return reply
            error = reply.get("error") or {}
            raise RequestFailed(str(error.get("code", "unknown")), str(error.get("message", reply)))

    def events(self) -> Iterator[dict[str, Any]]:
        """Events of a subscription, as they come, until the daemon goes away."""
        while True:
            message = self.receive(timeout=None)
            if "event" in message:
                yield message
