"""Fan-out of live events to `rbd tail` subscribers.

Each subscriber has a bounded buffer. Publishing never waits: a subscriber
whose buffer is full has stopped reading, and is dropped (its connection
closed) rather than allowed to slow the daemon or the other subscribers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

SUBSCRIBER_BUFFER = 2048


@dataclass(eq=False)
class Subscription:
    project: str | None
    send: MemoryObjectSendStream[dict[str, Any]]
    receive: MemoryObjectReceiveStream[dict[str, Any]]
    dropped: anyio.Event = field(default_factory=anyio.Event)


class EventHub:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def subscribe(self, project: str | None) -> Subscription:
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](SUBSCRIBER_BUFFER)
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
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.unsubscribe(subscription)

    def __len__(self) -> int:
        return len(self._subscribers)
