"""The daemon as a whole: recovery after a crash, the socket server, the
watched projects, and an orderly shutdown.

`Daemon` is complete once built; what needs the main task group (the registry of
watched projects, the benches) is made in `main`, together with the services the
request handlers are given, and passed on from there.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import anyio
import structlog

from rbd.contract import paths
from rbd.daemon.advice import advisor
from rbd.daemon.bench.idle import IdleBenches
from rbd.daemon.bench.job import Benches
from rbd.daemon.build import procs
from rbd.daemon.build.shim import Shims
from rbd.daemon.errors import DaemonError, StoreError
from rbd.daemon.export.exporters import Exporters
from rbd.daemon.projects.registry import Registry
from rbd.daemon.rpc.events import EventHub
from rbd.daemon.rpc.server import Server
from rbd.daemon.services import DaemonInfo, Services
from rbd.daemon.store.asyncstore import AsyncStore
from rbd.daemon.store.sqlite import Store
from rbd.daemon.tunables import Tunables

log = structlog.get_logger("daemon")

# How often builds a failing store could not take are offered to it again.
STORE_RETRY_S = 2.0
# After a failed accept(): builds and connections ending free descriptors meanwhile.
ACCEPT_RETRY_S = 0.1
# At shutdown: how long the projects' builds get to stop and the store to take the rest.
STOP_GRACE_S = 4.0


class Daemon:
    def __init__(self, store: Store, tunables: Tunables) -> None:
        self.store = AsyncStore(store)
        self.tunables = tunables
        self.hub = EventHub(tunables.subscriber_buffer)
        self.shims = Shims(Path(paths.cache_dir()))
        self.info = DaemonInfo(socket=paths.socket_path())
        self._shutdown = anyio.Event()

    def request_shutdown(self) -> None:
        self._shutdown.set()

    async def _recover(self) -> None:
        """Before any new build: kill what a crashed daemon's builds left running.
        Raises StoreError."""
        for build_id, pgid, pg_start in await self.store.call(self.store.sync.running_builds):
            killed = procs.kill_stale_group(pgid, pg_start) if pgid else 0
            await self.store.call(self.store.sync.mark_interrupted, build_id)
            log.warning("build_interrupted", build_id=build_id, pgid=pgid, killed=killed)

    async def _resume(self, registry: Registry) -> None:
        """Watch again what was watched before the daemon stopped. Raises StoreError."""
        for root, env, overrides in await self.store.call(self.store.sync.watched_projects):
            try:
                await registry.start(root, env, overrides, persist=False)
            except DaemonError as exc:
                log.error("resume_failed", root=root, error=str(exc))

    async def _serve(self, listener: anyio.abc.SocketListener, server: Server) -> None:
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
                tg.start_soon(server.handle, stream)

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
        socket_path = self.info.socket
        log.info("daemon_started", pid=os.getpid(), socket=socket_path)
        try:
            await self._recover()
        except StoreError as exc:
            log.error("recover_failed", error=str(exc))
        listener = await anyio.create_unix_listener(socket_path)
        os.chmod(socket_path, 0o600)
        async with anyio.create_task_group() as tg:
            await tg.start(procs.take_charge, paths.store_path())
            exporters = Exporters(self.hub, tg)
            registry = Registry(
                self.store,
                self.hub,
                tg,
                self.shims,
                Path(paths.state_dir()) / "apps",
                on_change=lambda: exporters.follow(registry.projects),
            )
            benches = Benches(registry, self.store, self.hub, self.shims)
            await tg.start(benches.run)
            idle = IdleBenches(
                registry,
                benches,
                self.store,
                lambda p: advisor.suggestions(self.store, p.key, p.env, p.overrides),
            )
            await tg.start(idle.run)
            services = Services(
                info=self.info,
                store=self.store,
                registry=registry,
                hub=self.hub,
                benches=benches,
                request_shutdown=self.request_shutdown,
            )
            tg.start_soon(self._signals)
            tg.start_soon(self._retry_store)
            try:
                await self._resume(registry)
            except StoreError as exc:
                log.error("resume_failed", error=str(exc))
            tg.start_soon(self._serve, listener, Server(services, self.tunables))
            await self._shutdown.wait()
            log.info("daemon_stopping", projects=len(registry.projects))
            # Projects stopped now are still exported where they were, not dropped.
            exporters.closing = True
            with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_GRACE_S):
                for key in list(registry.projects):
                    await registry.stop(key, forget=False)
                try:
                    await self.store.flush()
                except StoreError as exc:
                    log.error("builds_lost", count=len(self.store.unsaved), error=str(exc))
            await exporters.close()
            tg.cancel_scope.cancel()
        log.info("daemon_stopped")
