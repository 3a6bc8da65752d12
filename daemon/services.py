"""What the request handlers work with, built once by the daemon's main task and
passed to the server: nothing a handler uses is reached for through the daemon."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio

from rbd.contract import __version__, paths, protocol
from rbd.daemon.bench.job import Benches
from rbd.daemon.projects.registry import Registry
from rbd.daemon.rpc.events import EventHub
from rbd.daemon.store.asyncstore import AsyncStore


@dataclass(frozen=True)
class DaemonInfo:
    """The daemon's identity, as `hello` and `status` report it."""

    socket: str
    pid: int = field(default_factory=os.getpid)
    version: str = __version__
    protocol: int = protocol.PROTOCOL_VERSION
    log: str = field(default_factory=paths.log_path)
    # time.monotonic() at start, for the uptime.
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Services:
    info: DaemonInfo
    store: AsyncStore
    registry: Registry
    hub: EventHub
    benches: Benches
    # Asks the daemon to stop (it does once the current reply is sent).
    request_shutdown: Callable[[], None]
    # Held by a tune apply or revert from its first read of the files to its record in
    # the store: two at once would record their tunes out of the order of their writes,
    # and a revert then see a false conflict (they take seconds: cargo checks each).
    tuning: anyio.Lock = field(default_factory=anyio.Lock)
