"""One client's connection, as the server and the handlers share it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import anyio
from anyio.abc import SocketStream, TaskGroup

from rbd.contract import protocol
from rbd.daemon.rpc.events import Subscription

# A client that does not read a reply for this long is gone (or stuck): the
# connection ends rather than hold the task that writes to it.
SEND_TIMEOUT_S = 10.0


class Connection:
    def __init__(self, stream: SocketStream, tasks: TaskGroup) -> None:
        self.stream = stream
        # The connection's own tasks (serving requests, forwarding events): cancelled
        # together when it closes.
        self.tasks = tasks
        # Received bytes not yet part of a line answered.
        self.buffer = bytearray()
        self.send_lock = anyio.Lock()
        self.subscription: Subscription | None = None
        # Set to end the connection (the client left, or its subscription was dropped).
        self.closing = anyio.Event()
        # `shutdown`: the daemon is told to stop once the reply is sent.
        self.shutdown_after_reply = False

    async def send(self, message: Mapping[str, Any]) -> None:
        """Raises TimeoutError after SEND_TIMEOUT_S, and anyio's stream errors or
        OSError if the client left."""
        async with self.send_lock:
            with anyio.fail_after(SEND_TIMEOUT_S):
                await self.stream.send(encode(message))


def encode(message: Mapping[str, Any]) -> bytes:
    try:
        return protocol.encode(message)
    except UnicodeEncodeError:
        # A lone surrogate (JSON may carry "\ud800") in an echoed id or in a message
        # quoting a path: escaped, it is still JSON and decodes to the same string.
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"
