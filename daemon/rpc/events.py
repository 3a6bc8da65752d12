"""Fan-out of live events to `rbd tail` subscribers.

Each subscriber has a bounded buffer. Publishing never waits: a subscriber
whose buffer is full has stopped reading, and is dropped (its connection
closed) rather than allowed to slow the daemon or the other subscribers.

The buffer holds SUBSCRIBER_BUFFER events, or the number given by the
environment variable RBD_SUBSCRIBER_BUFFER (an integer 1..MAX_SUBSCRIBER_BUFFER)
of the daemon's process, read once when the daemon starts. It exists so that
tests can reach the drop with a few events; any other value refuses to start
the daemon rather than silently using the default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from rbd.daemon.errors import ConfigError

log = structlog.get_logger("events")

SUBSCRIBER_BUFFER = 2048
SUBSCRIBER_BUFFER_ENV = "RBD_SUBSCRIBER_BUFFER"
# A buffer this large would let one stuck `rbd tail` hold gigabytes of events.
MAX_SUBSCRIBER_BUFFER = 1 << 20


def buffer_size(env: Mapping[str, str] | None = None) -> int:
    """The per-subscriber buffer size the environment asks for (default SUBSCRIBER_BUFFER)."""
    raw = (os.environ if env is None else env).get(SUBSCRIBER_BUFFER_ENV, "").strip()
    if not raw:
        return SUBSCRIBER_BUFFER
    try:
        size = int(raw)
    except ValueError:
        raise ConfigError(f"{SUBSCRIBER_BUFFER_ENV} must be an integer (got {raw!r})") from None
    # 0 would make anyio's stream unbuffered: every subscriber dropped on its first event.
    if not 1 <= size <= MAX_SUBSCRIBER_BUFFER:
        raise ConfigError(
            f"{SUBSCRIBER_BUFFER_ENV} must be between 1 and {MAX_SUBSCRIBER_BUFFER} (got {size})"
        )
    return size


@dataclass(eq=False)
class Subscription:
    project: str | None
    send: MemoryObjectSendStream[dict[str, Any]]
    receive: MemoryObjectReceiveStream[dict[str, Any]]
    dropped: anyio.Event = field(default_factory=anyio.Event)


class EventHub:
    def __init__(self, buffer: int | None = None) -> None:
        self.buffer = buffer_size() if buffer is None else buffer
        self._subscribers: set[Subscription] = set()

    def subscribe(self, project: str | None) -> Subscription:
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](self.buffer)
        subscription = Subscription(project, send, receive)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        subscription.send.close()

    def publish(self, event: dict[str, Any]) -> None:
        for subscription in list(self._subscribers):
            if subscription.project not in (None, event.get("project")):
                continue
            try:
                subscription.send.send_nowait(event)
            except anyio.WouldBlock:
                self.unsubscribe(subscription)
                subscription.dropped.set()
                # Logged: a user whose `rbd tail` ended by itself can find out why.
                log.warning("subscriber_dropped", project=subscription.project, buffer=self.buffer)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.unsubscribe(subscription)

    def __len__(self) -> int:
        return len(self._subscribers)
