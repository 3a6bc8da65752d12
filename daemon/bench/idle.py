"""Idle benches (`auto_bench`, off by default): re-measuring a project's suggestions while
its developer is away, and getting out of the way the moment they are back.

When is a project idle: it has `auto_bench` on, no change was reported in it for
`auto_bench_idle_s` (every change counts, through Project.on_change) and it was in no
other state than `idle` for as long (a build, a settle, a bench's pause all count); no
watched project is building, settling or paused (a queued build anywhere means someone
is at work); no bench runs; and the machine's 1-minute load average per core is below
`auto_bench_max_load`. The load average counts runnable and uninterruptible (disk)
processes alike, whoever started them, so a compile, a test run or a copy elsewhere
keeps it high; it lags a minute behind, which errs on the side of not starting. It is
read only before a bench starts: the bench's own load would read as a busy machine.

What it measures: the configurations daemon.advice.evidence.MEASURED_BY maps the
project's current suggestions to (read when the decision is made: new configurations
and rules bring new entries), incremental mode only (a save's rebuild; clean benches
take minutes and are left to `rbd bench --clean`), those without a fresh measurement
(daemon.bench.freshness), with the baseline `default` beside them (a gain is only
comparable within one bench). All fresh: nothing runs, and nothing is checked again
until the project changes or RECHECK_S passed (a week's age, a `rustup update`).
A configuration this machine cannot build is not asked for; one whose builds failed in
an idle bench is not asked for again under the same conditions.

How: the same bench as `rbd bench --incremental` (daemon.bench.runner: a copy of the
sources under the target dir, one file of it edited per run), its cargo at the lowest
CPU and I/O priority (daemon.bench.priority), in the benches' one slot
(daemon.bench.job): the project's builds are not held. A change in any watched project,
a build starting in one, or a bench someone asks for stops it at once (its cargo's
process group killed from the event loop, then waited for); its runs are interleaved,
so no configuration is complete before the end, and nothing of a stopped bench is
kept. It starts again from the beginning once the project is idle again.

A budget bounds it: at most `auto_bench_budget_s` of idle-bench time per project in any
24 hours, stopped ones included (a bench started with less left is stopped when it runs
out). It is kept in memory: a restarted daemon starts with a full budget.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.to_thread
import structlog
from anyio.abc import TaskGroup, TaskStatus

from rbd.contract.schema import BenchConditions, SuggestReply
from rbd.daemon.advice import evidence
from rbd.daemon.bench import freshness, priority
from rbd.daemon.bench.job import Benches, BenchJob
from rbd.daemon.bench.runner import Options
from rbd.daemon.build import configurations
from rbd.daemon.errors import DaemonError, StoreError
from rbd.daemon.projects.project import Project
from rbd.daemon.projects.registry import Registry
from rbd.daemon.store.asyncstore import AsyncStore

log = structlog.get_logger("bench")

MODE = "incremental"
BASELINE = "default"
DAY_S = 86400.0
# Without a change, fresh measurements are looked at again this often (they age; a
# toolchain can be updated without any save).
RECHECK_S = 3600.0
# How often the projects are looked at: a quarter of the shortest idle time, within
# these bounds (a save stops a bench through Project.on_change, not through this).
POLL_MIN_S = 0.05
POLL_MAX_S = 5.0
# While an idle bench runs: how soon a build with no change behind it (`rbd build`, a
# run-mode restart) stops it.
POLL_RUNNING_S = 0.5
TRIGGERS_CONSIDERED = 200
# A save stops an idle bench once its build is launched (LAUNCH_GRACE_S after the
# launcher made it), at most STOP_AFTER_S after the change: within the 100 ms a save
# may take to stop it, with the settle time and the watcher's delivery before it.
STOP_AFTER_S = 0.05
LAUNCH_POLL_S = 0.002
LAUNCH_GRACE_S = 0.003

# The `suggest` reply for a project (advisor.suggestions with its env and settings).
Suggest = Callable[[Project], Awaitable[SuggestReply]]


def machine_load() -> float | None:
    """The 1-minute load average per core; None where the system has none."""
    try:
        one_minute = os.getloadavg()[0]
    except OSError:
        return None
    return one_minute / (os.cpu_count() or 1)


class IdleBenches:
    """Decides when idle benches run, and starts and stops them (the module's docstring)."""

    def __init__(
        self,
        registry: Registry,
        benches: Benches,
        store: AsyncStore,
        suggest: Suggest,
        load: Callable[[], float | None] = machine_load,
        reader: freshness.Reader | None = None,
    ) -> None:
        self.registry = registry
        self.benches = benches
        self.store = store
        self.suggest = suggest
        self.load = load
        self.reader = reader or freshness.READER
        # Per project (root): when it was last seen at work (monotonic).
        self._active: dict[str, float] = {}
        # When its measurements were last found fresh (or nothing to measure).
        self._checked: dict[str, float] = {}
        # (when it ended, wall clock; seconds) of each idle bench, for the budget.
        self._spent: dict[str, list[tuple[float, float]]] = {}
        # Configurations whose idle bench failed, under the conditions then.
        self._failed: dict[str, tuple[BenchConditions, set[str]]] = {}
        self._job: BenchJob | None = None
        self._job_started = 0.0
        # The priority tools that work, per PATH (priority.usable).
        self._prefix: dict[str, list[str]] = {}
        # The last decision logged per project, so the log says each once.
        self._said: dict[str, str] = {}
        # For the stops that wait for a save's build (run() holds it open).
        self._tasks: TaskGroup | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Look at the watched projects until cancelled (`await tg.start(idle.run)`)."""
        async with anyio.create_task_group() as tg:
            self._tasks = tg
            task_status.started()
            try:
                while True:
                    await anyio.sleep(self._poll_s())
                    try:
                        await self.step()
                    except Exception:
                        # A bug here must not end idle benches for the daemon's lifetime.
                        log.exception("idle_bench_failed")
            finally:
                self._tasks = None

    def _poll_s(self) -> float:
        if self._job is not None:
            return POLL_RUNNING_S
        idle = [p.config.auto_bench_idle_s for p in self._projects() if p.config.auto_bench]
        return min(POLL_MAX_S, max(POLL_MIN_S, min(idle, default=POLL_MAX_S * 4) / 4))

    def _projects(self) -> list[Project]:
        return list(self.registry.projects.values())

    def on_change(self, project: Project) -> None:
        """A change in project (Project.on_change): it is at work, and an idle bench
        stops once the change's build has started (_stop_after_launch). Raises nothing."""
        self._active[project.key] = time.monotonic()
        self._checked.pop(project.key, None)
        self._said.pop(project.key, None)
        job = self.benches.running
        if job is None or not job.idle or job.stopped is not None:
            return
        job.stopped = f"a change in {project.key}"
        if self._tasks is None or STOP_AFTER_S <= 0:
            self.benches.stop_idle_now(job.stopped)
        else:
            self._tasks.start_soon(self._stop_after_launch, project, job)

    async def _stop_after_launch(self, project: Project, job: BenchJob) -> None:
        """Stop job once project's build has been launched, or STOP_AFTER_S after the
        change, whichever is first. Killing the bench's processes (a scan of /proc on
        the event loop, then scans in a thread until they are gone: SIGKILLed processes at
        SCHED_IDLE wait for a CPU to die on) delayed the save's cargo spawn by 5-15 ms
        when done at once; at idle priority the bench takes nothing from that build
        meanwhile."""
        with anyio.move_on_after(STOP_AFTER_S):
            while project.current is None:
                await anyio.sleep(LAUNCH_POLL_S)
            # The launcher made its Build: cargo is spawned within a millisecond or two.
            await anyio.sleep(LAUNCH_GRACE_S)
        self.benches.stop_idle_now(job.stopped or "a change")

    async def step(self) -> None:
        """One look: note who is at work, stop an idle bench that must give way, start
        one where it may run. Raises StoreError (logged by run)."""
        now = time.monotonic()
        projects = self._projects()
        busy = []
        for project in projects:
            if project.on_change is None:
                project.on_change = self.on_change
            self._active.setdefault(project.key, now)
            if project.state != "idle" or project.current is not None:
                self._active[project.key] = now
                busy.append(project.key)
        if self._job is not None:
            if self._job.done.is_set():
                self._ended(self._job)
            elif busy:
                await self.benches.stop_idle(f"a build of {busy[0]}")
                return
            elif self._job.root not in self.registry.projects:
                await self.benches.stop_idle(f"{self._job.root} is no longer watched")
                return
            else:
                return
        if self.benches.busy or busy:
            return
        for project in projects:
            if self._may_start(project, now):
                await self._consider(project)
                return

    def _ended(self, job: BenchJob) -> None:
        spent = time.monotonic() - self._job_started
        self._spent.setdefault(job.root, []).append((time.time(), spent))
        self._job = None
        report = job.report
        if report is None:
            if job.stopped is None:
                # It failed, or its budget ran out: not again before the project changes.
                self._checked[job.root] = time.monotonic()
            log.info("idle_bench_stopped", root=job.root, why=job.stopped, spent_s=round(spent, 2))
            return
        failed = {
            str(r["config"])
            for r in report["results"]
            if r.get("available") and r.get("median_s") is None
        }
        conditions = report.get("conditions")
        if failed and conditions is not None:
            self._failed[job.root] = (conditions, failed)
        log.info(
            "idle_bench_finished", root=job.root, bench_id=report.get("id"), spent_s=round(spent, 2)
        )

    def budget_left(self, project: Project) -> float:
        """Seconds of idle bench left to project in the last 24 hours. Raises nothing."""
        since = time.time() - DAY_S
        spent = [(at, s) for at, s in self._spent.get(project.key, []) if at >= since]
        self._spent[project.key] = spent
        return project.config.auto_bench_budget_s - sum(s for _, s in spent)

    def _may_start(self, project: Project, now: float) -> bool:
        config = project.config
        if not config.auto_bench or project.watcher.gone:
            return False
        if now - self._active.get(project.key, now) < config.auto_bench_idle_s:
            return False
        if self.budget_left(project) <= 0:
            self._say(project, "idle_bench_budget_used", budget_s=config.auto_bench_budget_s)
            return False
        checked = self._checked.get(project.key)
        if checked is not None and now - checked < RECHECK_S:
            return False
        load = self.load()
        if load is not None and load >= config.auto_bench_max_load:
            self._say(project, "idle_bench_machine_busy", load_per_core=round(load, 2))
            return False
        return True

    def _say(self, project: Project, event: str, **fields: Any) -> None:
        """Log a decision about project once (until another one is made)."""
        if self._said.get(project.key) != event:
            self._said[project.key] = event
            log.info(event, root=project.key, **fields)

    async def _consider(self, project: Project) -> None:
        """Start an idle bench of what project lacks fresh measurements of, if anything."""
        wanted = await self.wanted(project)
        if not wanted:
            self._checked[project.key] = time.monotonic()
            self._say(project, "idle_bench_nothing_to_do")
            return
        # The decision took a while (the probe, the store): the developer may be back.
        if project.state != "idle" or self.benches.busy:
            return
        if time.monotonic() - self._active.get(project.key, 0.0) < project.config.auto_bench_idle_s:
            return
        program = await self._wrapper(project)
        triggers: list[list[str]] = []
        try:
            triggers = await self.store.call(
                self.store.sync.recent_triggers, project.key, TRIGGERS_CONSIDERED
            )
        except StoreError as exc:
            log.error("store_failed", error=str(exc))
        options = Options(configs=tuple(wanted), modes=(MODE,))
        self._job = self.benches.start_idle(
            project, options, program, triggers, self.budget_left(project), self.reader
        )
        self._job_started = time.monotonic()
        self._said.pop(project.key, None)
        log.info("idle_bench_started", root=project.key, configs=wanted)

    async def wanted(self, project: Project) -> list[str]:
        """The configurations an idle bench of project would measure now: the baseline
        first, then those behind its current suggestions lacking a fresh measurement;
        empty when there are none. Raises StoreError."""
        reply = await self.suggest(project)
        behind = []
        for suggestion in reply["suggestions"]:
            if suggestion.get("runnable") is False:
                continue
            config, mode = evidence.MEASURED_BY.get(suggestion["id"], (None, None))
            if config is not None and mode == MODE and config != BASELINE:
                behind.append(config)
        if not behind:
            return []
        root = project.root
        current = await freshness.of_project(root, project.env, project.overrides)
        if current is None:
            return []
        measurements = await self.store.call(self.store.sync.latest_results, project.key)
        now = datetime.now(UTC)
        failed_under, failed = self._failed.get(project.key, (None, set()))
        if failed_under != current:
            failed = set()
        stale = [
            name
            for name in dict.fromkeys(behind)
            if name not in failed and not _fresh(measurements, name, current, now)
        ]
        if not stale:
            return []
        names = [BASELINE, *stale]
        try:
            found = await configurations.for_machine(
                names, root, project.workspace.target_dir / "rbd" / "bench", project.env
            )
        except DaemonError as exc:
            log.warning("idle_bench_configs_unknown", root=project.key, error=str(exc))
            return []
        runnable = [c.name for c in found if c.available]
        return runnable if len(runnable) > 1 and runnable[0] == BASELINE else []

    async def _wrapper(self, project: Project) -> str:
        path = project.env.get("PATH", os.defpath)
        prefix = self._prefix.get(path)
        if prefix is None:
            prefix = await anyio.to_thread.run_sync(priority.usable, path)
            self._prefix[path] = prefix
            log.info("idle_priority", prefix=prefix)
        directory = project.workspace.target_dir / "rbd" / "bench"
        wrapper = await anyio.to_thread.run_sync(priority.write_wrapper, directory, prefix)
        return str(wrapper)


def _fresh(measurements: list[Any], config: str, current: BenchConditions, now: datetime) -> bool:
    """Whether config has a fresh incremental measurement beside a baseline."""
    for measured in measurements:
        result: Mapping[str, Any] = measured.get("result") or {}
        if (
            result.get("config") == config
            and result.get("mode") == MODE
            and not result.get("cache")
        ):
            if measured.get("base") is None:
                return False
            why = freshness.stale(
                measured.get("conditions"), current, measured.get("bench_at"), now
            )
            return why is None
    return False
