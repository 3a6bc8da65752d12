"""`rbd bench` as a daemon job: one at a time, in the daemon's own task group (a client
that leaves does not stop it; `bench_cancel` does), with the watched project's own
builds held meanwhile and the report stored for `rbd suggest`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from rbd.contract import paths, protocol
from rbd.daemon import logsetup
from rbd.daemon.bench.runner import Bench, Options
from rbd.daemon.build.shim import Shims
from rbd.daemon.errors import BenchCancelled, Busy, DaemonError, NotWatched, StoreError
from rbd.daemon.projects import workspace as workspaces
from rbd.daemon.store.sqlite import Store

if TYPE_CHECKING:
    from rbd.daemon.app import Daemon

log = structlog.get_logger("bench")
TRIGGERS_CONSIDERED = 200


class BenchJob:
    def __init__(self, bench: Bench, root: str) -> None:
        self.bench = bench
        self.root = root
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.report: dict[str, Any] | None = None
        self.error: DaemonError | None = None


async def start(
    daemon: Daemon, path: str, env: dict[str, str], options: Options, detach: bool
) -> dict[str, Any]:
    """Run a bench of the project at path; its report (or, detached, at once its start)."""
    if daemon.bench is not None:
        raise Busy(f"a bench of {daemon.bench.root} is running (rbd bench --cancel stops it)")
    project = daemon.registry.find(path)
    if project is None:
        # The daemon runs cargo only in projects its user chose to watch.
        raise NotWatched(
            f"{path} is not inside a project rbd watches: `rbd start` it first, or "
            "`rbd bench --foreground` runs the bench without the daemon"
        )
    env, overrides = project.env, project.overrides
    workspace = await workspaces.load(project.root, env)
    root = str(workspace.root)
    triggers: list[list[str]] = []
    try:
        triggers = await daemon.store.call(
            daemon.store.sync.recent_triggers, root, TRIGGERS_CONSIDERED
        )
    except StoreError as exc:
        log.error("store_failed", error=str(exc))

    def emit(event: dict[str, Any]) -> None:
        daemon.hub.publish({"project": root, **event})

    if daemon.bench is not None:  # another request won the race while cargo metadata ran
        raise Busy(f"a bench of {daemon.bench.root} is running")
    job = BenchJob(Bench(workspace, env, options, daemon.shims, emit, triggers, overrides), root)
    daemon.bench = job

    async def run() -> None:
        scheduler = project.scheduler
        try:
            with job.scope:
                scheduler.pause()
                await scheduler.wait_idle()
                job.report = await job.bench.run()
            if job.report is None:
                raise BenchCancelled("the bench was cancelled; nothing was recorded")
            try:
                job.report["id"] = await daemon.store.call(
                    daemon.store.sync.record_bench, root, job.report
                )
            except StoreError as exc:
                log.error("store_failed", error=str(exc))
            emit({"event": protocol.BENCH_FINISHED, "report": job.report})
        except DaemonError as exc:
            job.error = exc
            emit({"event": protocol.BENCH_FINISHED, "error": str(exc), "code": exc.code})
        except Exception as exc:
            log.exception("bench_failed", root=root)
            job.error = DaemonError(f"the bench failed: {type(exc).__name__}: {exc}")
            emit({"event": protocol.BENCH_FINISHED, "error": str(job.error)})
        finally:
            scheduler.resume()
            daemon.bench = None
            job.done.set()

    daemon.tasks.start_soon(run)
    if detach:
        return {"project": root, "started": True}
    await job.done.wait()
    if job.error is not None:
        raise job.error
    assert job.report is not None
    return {"project": root, "report": job.report}


def cancel(daemon: Daemon, path: str | None) -> dict[str, Any]:
    job = daemon.bench
    if job is None or (path is not None and not Path(path).resolve().is_relative_to(job.root)):
        return {"cancelled": False}
    job.scope.cancel()
    return {"cancelled": True, "project": job.root}


def run_foreground(
    path: str, env: dict[str, str], options: Options, emit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    """`rbd bench --foreground`: the same bench in the calling process, without a daemon
    (so nothing pauses a daemon's builds of the project meanwhile)."""
    logsetup.configure(paths.log_path())

    async def main() -> dict[str, Any]:
        workspace = await workspaces.load(Path(path), env)
        root = str(workspace.root)
        try:
            store: Store | None = Store(Path(paths.store_path()))
        except StoreError as exc:
            log.error("store_failed", error=str(exc))
            store = None
        try:
            triggers = store.recent_triggers(root, TRIGGERS_CONSIDERED) if store else []
            shims = Shims(Path(paths.cache_dir()))
            report = await Bench(workspace, env, options, shims, emit, triggers).run()
            if store is not None:
                report["id"] = store.record_bench(root, report)
            return report
        finally:
            if store is not None:
                store.close()

    return anyio.run(main)
