"""`rbd bench` as a daemon job: one at a time, in a task group of its own (a client
that leaves does not stop it; `bench_cancel` does), with the watched project's own
builds held meanwhile and the report stored for `rbd suggest`.

An idle bench (daemon.bench.idle decides when) is the same job in the same slot, with
two differences: the project's builds are not held (its cargo runs at the lowest
priority instead, and a save stops it: `stop_idle`), and it gives way: a bench someone
asks for stops it first, then runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from rbd.contract import paths, protocol
from rbd.contract.schema import BenchCancelReply, BenchFinished, BenchReply, BenchReport
from rbd.daemon import logsetup
from rbd.daemon.bench import freshness
from rbd.daemon.bench.runner import Bench, Emit, Options
from rbd.daemon.build.shim import Shims
from rbd.daemon.errors import BenchCancelled, Busy, DaemonError, NotWatched, StoreError
from rbd.daemon.projects import workspace as workspaces
from rbd.daemon.projects.project import Project
from rbd.daemon.projects.registry import Registry
from rbd.daemon.rpc.events import EventHub
from rbd.daemon.store.asyncstore import AsyncStore
from rbd.daemon.store.sqlite import Store

log = structlog.get_logger("bench")
TRIGGERS_CONSIDERED = 200


class BenchJob:
    """One bench being run."""

    def __init__(self, bench: Bench, root: str, idle: bool = False) -> None:
        self.bench = bench
        self.root = root
        self.idle = idle
        # Why an idle bench was stopped early (a save, a bench asked for); None: it was
        # not, or its budget ran out (the scope's deadline).
        self.stopped: str | None = None
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self.report: BenchReport | None = None
        self.error: DaemonError | None = None


class Benches:
    """The daemon's benches: at most one running, in the task group `run` holds open
    (started by the daemon's main task group, so a shutdown cancels the bench)."""

    def __init__(self, registry: Registry, store: AsyncStore, hub: EventHub, shims: Shims) -> None:
        self.registry = registry
        self.store = store
        self.hub = hub
        self.shims = shims
        self.running: BenchJob | None = None
        self._tasks: TaskGroup | None = None
        # Benches asked for and being prepared (cargo metadata runs): no idle bench starts.
        self._asked = 0

    @property
    def busy(self) -> bool:
        """Whether a bench runs or one asked for is being prepared."""
        return self.running is not None or self._asked > 0

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hold the benches' task group open until cancelled (`await tg.start(benches.run)`)."""
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            task_status.started()
            try:
                await anyio.sleep_forever()
            finally:
                self._tasks = None

    async def start(self, path: str, options: Options, detach: bool) -> BenchReply:
        """Run a bench of the watched project at path, in the project's own environment
        and settings; its report (or, detached, at once its start).

        Raises Busy if a bench someone asked for is running (an idle one is stopped
        first, and waited for), NotWatched if path is in no watched
        project, ProjectError (cargo metadata failed), BenchCancelled if cancelled
        before it finished, or the DaemonError the bench failed with; a bug in the
        bench is answered as a DaemonError (`internal`) once logged.
        """
        if self.running is not None and not self.running.idle:
            raise Busy(f"a bench of {self.running.root} is running (rbd bench --cancel stops it)")
        project = self.registry.find(path)
        if project is None:
            # The daemon runs cargo only in projects its user chose to watch.
            raise NotWatched(
                f"{path} is not inside a project rbd watches: `rbd start` it first, or "
                "`rbd bench --foreground` runs the bench without the daemon"
            )
        self._asked += 1
        try:
            return await self._start(project, options, detach)
        finally:
            self._asked -= 1

    async def _start(self, project: Project, options: Options, detach: bool) -> BenchReply:
        if self.running is not None:
            # An idle bench: asked for, this one goes first (the idle one starts over once
            # the projects are idle again).
            await self.stop_idle("a bench was asked for", wait=True)
        if self.running is not None:
            raise Busy(f"a bench of {self.running.root} is running (rbd bench --cancel stops it)")
        env, overrides = project.env, project.overrides
        workspace = await workspaces.load(project.root, env)
        root = str(workspace.root)
        triggers: list[list[str]] = []
        try:
            triggers = await self.store.call(
                self.store.sync.recent_triggers, root, TRIGGERS_CONSIDERED
            )
        except StoreError as exc:
            log.error("store_failed", error=str(exc))

        def emit(event: Mapping[str, Any]) -> None:
            self.hub.publish({"project": root, **event})

        def finished(event: BenchFinished) -> None:
            emit(event)

        if self.running is not None:  # another request won the race while cargo metadata ran
            raise Busy(f"a bench of {self.running.root} is running")
        if self._tasks is None:
            raise DaemonError("the daemon is not running benches (it is stopping)")
        bench = Bench(workspace, env, options, self.shims, emit, triggers, overrides)
        job = BenchJob(bench, root)
        self.running = job

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
                    job.report["id"] = await self.store.call(
                        self.store.sync.record_bench, root, job.report.copy()
                    )
                except StoreError as exc:
                    log.error("store_failed", error=str(exc))
                finished({"project": root, "event": protocol.BENCH_FINISHED, "report": job.report})
            except DaemonError as exc:
                job.error = exc
                finished(
                    {
                        "project": root,
                        "event": protocol.BENCH_FINISHED,
                        "error": str(exc),
                        "code": exc.code,
                    }
                )
            except Exception as exc:
                log.exception("bench_failed", root=root)
                job.error = DaemonError(f"the bench failed: {type(exc).__name__}: {exc}")
                finished(
                    {"project": root, "event": protocol.BENCH_FINISHED, "error": str(job.error)}
                )
            finally:
                scheduler.resume()
                self.running = None
                job.done.set()

        self._tasks.start_soon(run)
        if detach:
            return {"project": root, "started": True}
        await job.done.wait()
        if job.error is not None:
            raise job.error
        assert job.report is not None
        return {"project": root, "report": job.report}

    def start_idle(
        self,
        project: Project,
        options: Options,
        program: str,
        triggers: list[list[str]],
        budget_s: float,
        reader: freshness.Reader,
    ) -> BenchJob:
        """Start an idle bench of project (daemon.bench.idle checked it may run), its
        cargo run through program (daemon.bench.priority's wrapper), stopped after
        budget_s. Returns its job, whose `done` is set once it ended and `report` holds
        what it stored. Raises Busy if a bench runs, DaemonError when stopping."""
        if self.busy:
            raise Busy(f"a bench of {self.running.root if self.running else 'a project'} runs")
        if self._tasks is None:
            raise DaemonError("the daemon is not running benches (it is stopping)")
        root = project.key

        def emit(event: Mapping[str, Any]) -> None:
            self.hub.publish({"project": root, **event})

        bench = Bench(
            project.workspace,
            project.env,
            options,
            self.shims,
            emit,
            triggers,
            project.overrides,
            reader=reader,
            program=program,
            idle=True,
        )
        job = BenchJob(bench, root, idle=True)
        job.scope = anyio.CancelScope(deadline=anyio.current_time() + budget_s)
        self.running = job
        self._tasks.start_soon(self._run_idle, job)
        return job

    async def _run_idle(self, job: BenchJob) -> None:
        root = job.root
        finished: BenchFinished = {"project": root, "event": protocol.BENCH_FINISHED, "idle": True}
        try:
            with job.scope:
                job.report = await job.bench.run()
            if job.report is None:
                # Interleaved runs: no configuration is complete before the last round,
                # so nothing of a stopped bench is kept.
                why = job.stopped or "its budget of bench time for today is used"
                finished["error"] = f"idle bench stopped: {why}; nothing was recorded"
                finished["code"] = protocol.CANCELLED
            else:
                try:
                    job.report["id"] = await self.store.call(
                        self.store.sync.record_bench, root, job.report.copy()
                    )
                except StoreError as exc:
                    log.error("store_failed", error=str(exc))
                finished["report"] = job.report
        except DaemonError as exc:
            finished["error"] = f"idle bench failed: {exc}"
            finished["code"] = exc.code
        except Exception as exc:
            log.exception("bench_failed", root=root, idle=True)
            finished["error"] = f"idle bench failed: {type(exc).__name__}: {exc}"
        finally:
            self.running = None
            job.done.set()
            self.hub.publish(finished)

    async def stop_idle(self, why: str, wait: bool = False) -> bool:
        """Stop the running idle bench, if one runs (why: for its finished event); with
        wait, return once it ended (its processes killed and waited for). Returns whether
        one was stopped. Raises nothing."""
        job = self.running
        if not self.stop_idle_now(why):
            return False
        if wait and job is not None:
            await job.done.wait()
        return True

    def stop_idle_now(self, why: str) -> bool:
        """stop_idle without waiting, for a callback on the event loop (a save). Raises
        nothing."""
        job = self.running
        if job is None or not job.idle:
            return False
        if job.stopped is None:
            job.stopped = why
        job.scope.cancel()
        return True

    def cancel(self, path: str | None) -> BenchCancelReply:
        """Cancel the running bench (of the project containing path, if given). Raises nothing."""
        job = self.running
        if job is None or (path is not None and not Path(path).resolve().is_relative_to(job.root)):
            return {"cancelled": False}
        if job.idle and job.stopped is None:
            job.stopped = "cancelled (rbd bench --cancel)"
        job.scope.cancel()
        return {"cancelled": True, "project": job.root}


def run_foreground(path: str, env: dict[str, str], options: Options, emit: Emit) -> BenchReport:
    """`rbd bench --foreground`: the same bench in the calling process, without a daemon
    (so nothing pauses a daemon's builds of the project meanwhile)."""
    logsetup.configure(paths.log_path())

    async def main() -> BenchReport:
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
