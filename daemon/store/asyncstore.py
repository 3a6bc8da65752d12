"""The store as the event loop uses it: off the loop, and never in the way of builds.

Each call runs in one worker thread at a time. A failing store (disk full, I/O
error) must not stop builds: callers get StoreError, the last error stays
readable in `error` for `rbd status`, and finished builds the store could not
take wait in memory (`unsaved`) until a write succeeds again. A later
successful write clears `error`.
"""

from __future__ import annotations

import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread
import structlog

from rbd.daemon.build.records import BuildHeader, BuildResult
from rbd.daemon.errors import StoreError
from rbd.daemon.store.sqlite import Store

log = structlog.get_logger("store")

# A few MB at most (a build's result with its units is a few kB): enough for
# days of saves against a full disk; beyond it the oldest are dropped, counted.
MAX_UNSAVED = 1000

P = ParamSpec("P")
T = TypeVar("T")


@dataclass
class Unsaved:
    """A finished build not yet in the store: begun there (build_id) or not at all."""

    build_id: int | None
    header: BuildHeader
    result: BuildResult


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self.sync = store
        self.error: str | None = None
        self.unsaved: deque[Unsaved] = deque()
        self.dropped = 0
        self._limiter = anyio.CapacityLimiter(1)
        # Two builds finishing at once must not both write the oldest one.
        self._flushing = anyio.Lock()

    async def call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """method(*args, **kwargs) of the store, in its worker thread. Raises StoreError
        for any sqlite3.Error (and remembers it as the store's error)."""

        def run() -> T:
            return method(*args, **kwargs)

        try:
            result = await anyio.to_thread.run_sync(run, limiter=self._limiter)
        except sqlite3.Error as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            raise StoreError(f"store {self.sync.path}: {exc}") from exc
        return result

    async def write(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A call that changes the store: its success means the store works again.
        Raises StoreError."""
        result = await self.call(method, *args, **kwargs)
        self.error = None
        return result

    def keep(self, build: Unsaved) -> None:
        if len(self.unsaved) >= MAX_UNSAVED:
            self.unsaved.popleft()
            self.dropped += 1
        self.unsaved.append(build)
        log.warning("build_unsaved", project=build.header.project, waiting=len(self.unsaved))

    async def flush(self) -> None:
        """Write the unsaved builds, oldest first; StoreError if the store still fails."""
        async with self._flushing:
            await self._flush()

    async def _flush(self) -> None:
        while self.unsaved:
            build = self.unsaved[0]
            if build.build_id is None:
                await self.write(self.sync.record_build, build.header, build.result)
            else:
                await self.write(self.sync.finish_build, build.build_id, build.result)
            self.unsaved.popleft()
            log.info("build_saved_late", project=build.header.project, waiting=len(self.unsaved))
