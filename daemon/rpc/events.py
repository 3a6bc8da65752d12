"""Fan-out of live events to `rbd tail` subscribers.

Each subscriber has a bounded buffer. Publishing never waits: a subscriber
whose buffer is full has stopped reading, and is dropped (its connection
closed) rather than allowed to slow the daemon or the other subscribers.

The buffer's size is the daemon's RBD_SUBSCRIBER_BUFFER tunable
(rbd.daemon.tunables; 2048 events by default).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

log = structlog.get_logger("events")


@dataclass(eq=False)
class Subscription:
    project: str | None
    # Events (schema.Event): those rbd.daemon.build.builder makes are still plain dicts.
    send: MemoryObjectSendStream[Mapping[str, Any]]
    receive: MemoryObjectReceiveStream[Mapping[str, Any]]
    dropped: anyio.Event = field(default_factory=anyio.Event)


class EventHub:
    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self._subscribers: set[Subscription] = set()

    def subscribe(self, project: str | None) -> Subscription:
        send, receive = anyio.create_memory_object_stream[Mapping[str, Any]](self.buffer)
        subscription = Subscription(project, send, receive)
        self._subscribers.add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)
        subscription.send.close()

    def publish(self, event: Mapping[str, Any]) -> None:
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
