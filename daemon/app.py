"""The daemon as a whole: recovery after a crash, the socket server, the
watched projects, and an orderly shutdown."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import structlog

from rbd.contract import __version__, paths, protocol
from rbd.daemon.bench.job import BenchJob
from rbd.daemon.build import procs
from rbd.daemon.build.shim import Shims
from rbd.daemon.errors import DaemonError, NotWatched, StoreError
from rbd.daemon.projects.project import Registry
from rbd.daemon.rpc import server
from rbd.daemon.rpc.events import EventHub
from rbd.daemon.store.asyncstore import AsyncStore
from rbd.daemon.store.sqlite import Store

log = structlog.get_logger("daemon")

# How often builds a failing store could not take are offered to it again.
STORE_RETRY_S = 2.0
# After a failed accept(): builds and connections ending free descriptors meanwhile.
ACCEPT_RETRY_S = 0.1


class Daemon:
    def __init__(self, store: Store) -> None:
        self.store = AsyncStore(store)
        self.hub = EventHub()
        self.shims = Shims(Path(paths.cache_dir()))
        self.registry: Registry
        # Jobs that outlive the request that started them (a bench).
        self.tasks: anyio.abc.TaskGroup
        self.bench: BenchJob | None = None
        self.started = time.monotonic()
        self.socket_path = paths.socket_path()
        self._shutdown = anyio.Event()

    def hello(self) -> dict[str, Any]:
        return {
            "protocol": protocol.PROTOCOL_VERSION,
            "version": __version__,
            "pid": os.getpid(),
        }

    def request_shutdown(self) -> None:
        self._shutdown.set()

    def status(self, path: str | None) -> dict[str, Any]:
        projects = list(self.registry.projects.values())
        if path is not None:
            found = self.registry.find(path)
            projects = [found] if found is not None else []
        return {
            "daemon": {
                "pid": os.getpid(),
                "version": __version__,
                "protocol": protocol.PROTOCOL_VERSION,
                "uptime_s": round(time.monotonic() - self.started, 3),
                "socket": self.socket_path,
                "log": paths.log_path(),
                "store": str(self.store.sync.path),
                "store_error": self.store.error,
                # Finished builds waiting in memory for a failing store.
                "unsaved_builds": len(self.store.unsaved),
                # Dropped, oldest first, once more than MAX_UNSAVED waited.
                "lost_builds": self.store.dropped,
                "subscribers": len(self.hub),
            },
            "projects": [project.status() for project in projects],
        }

    def resolve_watched(self, path: str | None) -> str:
        project = self.registry.find(path)
        if project is None:
            raise NotWatched(f"{path} is not inside a project rbd watches (see `rbd status`)")
        return project.key

    async def resolve_known(self, path: str | None) -> str | None:
        """The project (watched now, or with recorded builds) containing path, if any."""
        project = self.registry.find(path)
        if project is not None or not path:
            return None if project is None else project.key
        target = Path(path).resolve()
        known = await self.store.call(self.store.sync.known_projects)
        inside = [root for root in known if target.is_relative_to(root)]
        return max(inside, key=len) if inside else None

    async def _recover(self) -> None:
        """Before any new build: kill what a crashed daemon's builds left running."""
        for build_id, pgid, pg_start in await self.store.call(self.store.sync.running_builds):
            killed = procs.kill_stale_group(pgid, pg_start) if pgid else 0
            await self.store.call(self.store.sync.mark_interrupted, build_id)
            log.warning("build_interrupted", build_id=build_id, pgid=pgid, killed=killed)

    async def _resume(self) -> None:
        for root, env, overrides in await self.store.call(self.store.sync.watched_projects):
            try:
                await self.registry.start(root, env, overrides, persist=False)
            except DaemonError as exc:
                log.error("resume_failed", root=root, error=str(exc))

    async def _serve(self, listener: anyio.abc.SocketListener) -> None:
        # Not listener.serve(): an accept() failing (out of file descriptors,
        # EMFILE) would end it, and the daemon with it.
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    stream = await listener.accept()
                except (OSError, anyio.BrokenResourceError) as exc:
                    log.error("accept_failed", error=str(exc))
                    await anyio.sleep(ACCEPT_RETRY_S)
                    continue
                tg.start_soon(server.handle, self, stream)

    async def _retry_store(self) -> None:
        # A freed disk should not wait for the next save to be noticed.
        while True:
            await anyio.sleep(STORE_RETRY_S)
            if self.store.unsaved:
                with contextlib.suppress(StoreError):
                    await self.store.flush()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("signal", signal=signal.Signals(signum).name)
                self.request_shutdown()

    async def main(self) -> None:
        log.info("daemon_started", pid=os.getpid(), socket=self.socket_path)
        try:
            await self._recover()
        except StoreError as exc:
            log.error("recover_failed", error=str(exc))
        listener = await anyio.create_unix_listener(self.socket_path)
        os.chmod(self.socket_path, 0o600)
        async with anyio.create_task_group() as tg:
            self.registry = Registry(self.store, self.hub, tg, self.shims)
            self.tasks = tg
            tg.start_soon(self._signals)
            tg.start_soon(self._retry_store)
            try:
                await self._resume()
            except StoreError as exc:
                log.error("resume_failed", error=str(exc))
            tg.start_soon(self._serve, listener)
            await self._shutdown.wait()
            log.info("daemon_stopping", projects=len(self.registry.projects))
            with anyio.CancelScope(shield=True), anyio.move_on_after(4.0):
                for key in list(self.registry.projects):
                    await self.registry.stop(key, forget=False)
                try:
                    await self.store.flush()
                except StoreError as exc:
                    log.error("builds_lost", count=len(self.store.unsaved), error=str(exc))
            tg.cancel_scope.cancel()
        log.info("daemon_stopped")
