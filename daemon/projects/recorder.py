"""Recording a watched project's build: its row in the store, its process group, its events.

A build is recorded before cargo runs (so that a daemon dying mid-build leaves a row the
next one marks `interrupted`), its process group as soon as cargo has one (so that the
next daemon can kill what is left of it), and its result once it ends. A failing store
stops none of this: the build goes on, and its result waits in memory (AsyncStore.keep)
until a write succeeds. Every event of the build carries its project and build id.
"""

from __future__ import annotations

from typing import Any

import structlog

from rbd.contract import protocol
from rbd.contract.schema import BuildFinished, BuildStarted, BuildSummary, CurrentBuild
from rbd.daemon.build.builder import Build
from rbd.daemon.build.records import BuildHeader, BuildResult, finished_summary
from rbd.daemon.errors import StoreError
from rbd.daemon.rpc.events import EventHub
from rbd.daemon.store.asyncstore import AsyncStore, Unsaved

log = structlog.get_logger("projects")


async def begin(store: AsyncStore, hub: EventHub, header: BuildHeader) -> Recording:
    """Record a build about to run. Never raises StoreError: a build the store cannot
    take is recorded without a build id, and stored late (see Recording.finish)."""
    build_id: int | None = None
    try:
        # The builds waiting for the store go first: ids stay in the order builds ran.
        await store.flush()
        build_id = await store.write(store.sync.begin_build, header)
    except StoreError as exc:
        log.error("store_failed", error=str(exc), root=header.project)
    return Recording(store, hub, header, build_id)


class Recording:
    """One build of a watched project, from its row in the store to its summary."""

    def __init__(
        self, store: AsyncStore, hub: EventHub, header: BuildHeader, build_id: int | None
    ) -> None:
        self.store = store
        self.hub = hub
        self.header = header
        self.build_id = build_id

    def to_json(self) -> CurrentBuild:
        """The build while it runs, as `rbd status` shows it (`current`)."""
        return {
            "build_id": self.build_id,
            "started_at": self.header.started_at,
            "trigger": list(self.header.trigger),
            "command": list(self.header.command),
        }

    def emit(self, event: dict[str, Any]) -> None:
        """Publish an event of the running Build (its EventSink), with project and build id."""
        event.setdefault("project", self.header.project)
        event.setdefault("build_id", self.build_id)
        self.hub.publish(event)

    def started(self, build: Build, first_seen: float | None) -> None:
        """cargo runs (Build's on_spawn): the settle time is known, and announced."""
        if first_seen is not None:
            build.result.settle_s = build.spawned_at - first_seen
        event: BuildStarted = {
            "event": protocol.BUILD_STARTED,
            "trigger": list(self.header.trigger),
            "command": build.argv,
            "started_at": self.header.started_at,
            "settle_s": build.result.settle_s,
            "spawned_at": build.spawned_wall_ns / 1e9,
            "project": self.header.project,
            "build_id": self.build_id,
        }
        self.hub.publish(event)

    async def process_group(self, build: Build) -> None:
        """Store the build's process group once cargo has one (a task beside the build)."""
        await build.spawned.wait()
        if self.build_id is not None and build.pgid is not None:
            try:
                await self.store.write(
                    self.store.sync.set_process_group, self.build_id, build.pgid, build.pg_start
                )
            except StoreError as exc:
                log.error("store_failed", error=str(exc), root=self.header.project)

    async def finish(self, result: BuildResult) -> BuildSummary:
        """Store the result (or keep it for later), announce it; returns the build's summary.
        Never raises StoreError."""
        saved = False
        if self.build_id is not None:
            try:
                await self.store.write(self.store.sync.finish_build, self.build_id, result)
                saved = True
            except StoreError as exc:
                log.error("store_failed", error=str(exc), root=self.header.project)
        if not saved:
            self.store.keep(Unsaved(self.build_id, self.header, result))
        build = finished_summary(self.build_id, self.header, result)
        log.info(
            "build_finished",
            root=self.header.project,
            build_id=self.build_id,
            outcome=result.outcome,
            wall_s=round(result.wall_s, 3),
            trigger=list(self.header.trigger[:20]),
        )
        event: BuildFinished = {
            "event": protocol.BUILD_FINISHED,
            "build": build,
            "units": [unit.to_json() for unit in result.units],
            "first_error": result.first_error,
            "project": self.header.project,
            "build_id": self.build_id,
        }
        self.hub.publish(event)
        return build
