"""`rbd bench`: build configurations measured side by side, as a careful engineer would.

Every configuration, `default` included, builds a copy of the workspace (see
daemon.bench.source) into its own `<target dir>/rbd/bench/<name>`, so neither the user's
files nor their target dir are touched. Runs are interleaved (A B C A B C ...) so that
drift of the machine hits every configuration alike; warm-ups are not counted. Clean
runs `cargo clean` that configuration's target dir first; incremental runs edit one
source file of the copy first (a string literal, else a comment), so the crate really
recompiles.

Wall times are cargo's own (spawn to exit) and the phase split is rbd's usual
measurement (daemon.build.timings, link times from the shim), so a bench's numbers and a
watched build's numbers mean the same thing.

A configuration with sccache is two series in clean mode, each its own row: `cold`, every
run from an empty cache, and `warm`, every run right after a cold one, from the cache it
filled (daemon.bench.cache). A cache's state is what a clean build with sccache depends
on, and one row of both would average a first build with later ones. They are
interleaved like the others (cold, then warm, in each round); in incremental mode sccache
is one series, whose edits rebuild only what sccache cannot cache.
"""

from __future__ import annotations

import dataclasses
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import anyio
import structlog

from rbd.contract import protocol
from rbd.contract.schema import (
    BenchProgress,
    BenchReport,
    BenchResult,
    BenchStarted,
    BenchStatus,
)
from rbd.daemon.bench import freshness, source
from rbd.daemon.bench.cache import BenchCache
from rbd.daemon.build import cargo_config, configurations
from rbd.daemon.build.builder import Build
from rbd.daemon.build.records import BuildResult, phases_of
from rbd.daemon.build.shim import Shim, Shims
from rbd.daemon.errors import ConfigError
from rbd.daemon.projects import settings
from rbd.daemon.projects import workspace as workspaces
from rbd.daemon.store.sqlite import now_iso

log = structlog.get_logger("bench")

MODES = ("clean", "incremental")
NOISY = 0.10  # σ/mean above this flags a result as noisy
MAX_RUNS = 100
CLEAN_TIMEOUT_S = 120.0
Emit = Callable[[BenchStarted | BenchProgress], None]


@dataclasses.dataclass(frozen=True)
class Options:
    configs: tuple[str, ...] | None = None  # None: every named configuration
    runs: int = 6
    warmup: int = 2
    modes: tuple[str, ...] = MODES
    edit: str | None = None

    def check(self) -> Options:
        if not 1 <= self.runs <= MAX_RUNS:
            raise ConfigError(f"--runs must be between 1 and {MAX_RUNS} (got {self.runs})")
        if not 0 <= self.warmup <= MAX_RUNS:
            raise ConfigError(f"--warmup must be between 0 and {MAX_RUNS} (got {self.warmup})")
        if not self.modes or any(m not in MODES for m in self.modes):
            raise ConfigError(f"modes must be among {', '.join(MODES)} (got {list(self.modes)})")
        if self.configs is not None and not self.configs:
            raise ConfigError("--configs names no configuration")
        return self


@dataclasses.dataclass
class Series:
    """One configuration in one mode: its counted runs."""

    config: configurations.BuildConfig
    mode: str
    # For sccache in clean mode: "cold" or "warm" (see the module's docstring).
    cache: Literal["cold", "warm"] | None = None
    walls: list[float] = dataclasses.field(default_factory=list)
    results: list[BuildResult] = dataclasses.field(default_factory=list)
    failure: str | None = None


class Bench:
    """One bench of one project. `run()` returns the report (the `bench --json` shape)."""

    def __init__(
        self,
        workspace: workspaces.Workspace,
        env: dict[str, str],
        options: Options,
        shims: Shims,
        emit: Emit,
        triggers: list[list[str]] | None = None,
        overrides: dict[str, Any] | None = None,
        reader: freshness.Reader | None = None,
        program: str | None = None,
        idle: bool = False,
    ) -> None:
        self.workspace = workspace
        # A watched project's own settings (`rbd start --command check` ...): the bench
        # measures the command the daemon runs.
        self.overrides = overrides or {}
        self.env = env
        self.options = options.check()
        self.shims = shims
        self.emit = emit
        self.triggers = triggers or []
        # What the report records it ran with (freshness): manual and idle benches alike.
        self.reader = reader or freshness.READER
        # What runs cargo (daemon.bench.priority's wrapper for an idle bench); None: cargo.
        self.program = program
        # An idle bench (daemon.bench.idle): said in its events and status.
        self.idle = idle
        self.done = 0
        self.total = 0
        self.started = time.monotonic()
        self.configs = list(self.options.configs or ())  # all of them, once resolved
        # The build running now, for `rbd status`: its series, which of its runs
        # (priming, warm-up, counted) and that run's number of how many.
        self.building: tuple[Series, str, int, int] | None = None

    async def run(self) -> BenchReport:
        started_at = now_iso()
        workspace = self.workspace
        if workspace.metadata_error:
            raise ConfigError(f"cargo cannot read this project: {workspace.metadata_error}")
        root = workspace.root
        project_settings = await anyio.to_thread.run_sync(
            settings.load, root, self.env, self.overrides
        )
        base = project_settings.argv()
        # Read before the copy is made: the sources, the lockfile and the toolchain as of now.
        ran_with = await self.reader.read(root, base, self.env)
        if self.program is not None:
            base = [self.program, *base[1:]]
        bench_dir = workspace.target_dir / "rbd" / "bench"
        copy = bench_dir / "src"
        chosen = await self._resolve(root, bench_dir)
        self.configs = [c.name for c in chosen]
        runnable = [c for c in chosen if c.available]
        incremental = "incremental" in self.options.modes
        edit_file = (
            source.edit_target(root, list(workspace.package_dirs), self.triggers, self.options.edit)
            if incremental
            else None
        )
        rounds = self.options.warmup + self.options.runs
        per_mode = {"clean": rounds, "incremental": rounds + 1}  # +1: the priming build
        self.total = sum(per_mode[m] * len(_series(runnable, m)) for m in self.options.modes)
        files = await anyio.to_thread.run_sync(
            source.copy_workspace, root, workspace.target_dir, copy
        )
        log.info("bench_copy", root=str(root), copy=str(copy), files=files)
        if edit_file is not None:
            await anyio.to_thread.run_sync(source.own_file, copy, edit_file)
        original = (copy / edit_file).read_text() if edit_file else ""
        edit = source.plan_edit(original)
        # Announced once the copy is made: what the bench measures is the sources as of now.
        announced: BenchStarted = {
            "project": str(root),
            "event": protocol.BENCH_STARTED,
            "configs": [c.name for c in chosen],
            "modes": list(self.options.modes),
            "runs": self.options.runs,
            "warmup": self.options.warmup,
            "total": self.total,
        }
        if self.idle:
            announced["idle"] = True
        self.emit(announced)
        shim = await self.shims.get(self.env)
        # Each configuration's rustc wrapper: the user's, or sccache for one with it.
        wrappers = {
            c.name: await anyio.to_thread.run_sync(
                cargo_config.rustc_wrapper, root, c.apply_env(self.env)
            )
            for c in runnable
        }
        cached = [c for c in runnable if configurations.uses_sccache(c)]
        cache = None
        if cached and wrappers[cached[0].name] is not None:
            # Beside the configurations' target dirs, which `cargo clean` empties.
            cache = BenchCache(bench_dir / "sccache-cache", str(wrappers[cached[0].name]))
        runner = _Runner(self, base, copy, project_settings.timeout_s, shim, wrappers, cache)
        series: list[Series] = []
        edited = copy / (edit_file or "")
        try:
            for mode in self.options.modes:
                mode_series = _series(runnable, mode)
                if mode == "incremental":
                    edit = await runner.prime(mode_series, edited, original, edit)
                await runner.rounds(mode_series, rounds, edited, original, edit)
                series += mode_series
        finally:
            if cache is not None:
                with anyio.CancelScope(shield=True):
                    await cache.close()
        return {
            "project": str(root),
            "runs": self.options.runs,
            "warmup": self.options.warmup,
            "started_at": started_at,
            "finished_at": now_iso(),
            "edit": {"file": str(edit_file), "kind": edit.kind} if edit_file else None,
            "baseline": _baseline(chosen),
            "results": _results(chosen, series, self.options.modes),
            "conditions": ran_with,
        }

    async def _resolve(self, root: Path, bench_dir: Path) -> list[configurations.BuildConfig]:
        names = self.options.configs or configurations.NAMES
        chosen = await configurations.for_machine(names, root, bench_dir, self.env)
        # Each in its own bench dir, `default` included: the user's target dir stays untouched.
        return [dataclasses.replace(c, target_dir=bench_dir / c.name) for c in chosen]

    def status(self) -> BenchStatus:
        """Where the bench is (`rbd status`). Raises nothing."""
        series, run, number, of = self.building or (None, None, None, None)
        status: BenchStatus = {
            "configs": self.configs,
            "modes": list(self.options.modes),
            "runs": self.options.runs,
            "warmup": self.options.warmup,
            "done": self.done,
            "total": self.total,
            "elapsed_s": round(time.monotonic() - self.started, 3),
            "config": series.config.name if series else None,
            "cache": series.cache if series else None,
            "mode": series.mode if series else None,
            "run": run,
            "number": number,
            "of": of,
        }
        if self.idle:
            status["idle"] = True
        return status

    def progress(self, series: Series, counted: bool, result: BuildResult) -> None:
        self.done += 1
        event: BenchProgress = {
            "project": str(self.workspace.root),
            "event": protocol.BENCH_PROGRESS,
            "config": series.config.name,
            "mode": series.mode,
            "counted": counted,
            "outcome": result.outcome,
            "wall_s": round(result.wall_s, 4),
            "done": self.done,
            "total": self.total,
        }
        if self.idle:
            event["idle"] = True
        self.emit(event)


def _series(runnable: list[configurations.BuildConfig], mode: str) -> list[Series]:
    """The series of one mode: one per configuration, two (cold, warm) for one with
    sccache in clean mode."""
    found = []
    for config in runnable:
        if mode == "clean" and configurations.uses_sccache(config):
            found += [Series(config, mode, "cold"), Series(config, mode, "warm")]
        else:
            found.append(Series(config, mode))
    return found


class _Runner:
    """Runs the builds of one bench, interleaved."""

    def __init__(
        self,
        bench: Bench,
        base: list[str],
        copy: Path,
        timeout_s: float,
        shim: Shim | None,
        wrappers: dict[str, str | None],
        cache: BenchCache | None,
    ) -> None:
        self.bench = bench
        self.base = base
        self.copy = copy
        self.timeout_s = timeout_s
        self.shim = shim
        self.wrappers = wrappers
        self.cache = cache
        self.edits = 0

    async def prime(
        self, series: list[Series], path: Path, original: str, edit: source.Edit
    ) -> source.Edit:
        """One uncounted build per configuration, so that the runs after it are incremental.
        A string-literal edit that breaks the build is replaced by a comment edit."""
        for s in series:
            self.bench.building = (s, "priming", 1, 1)
            self._write(path, original, edit)
            result = await self.build(s)
            if result.outcome == "failure" and edit.kind == "string":
                edit = source.plan_edit(original, comment_only=True)
                log.warning("bench_edit_fallback", file=str(path), error=result.first_error)
                self._write(path, original, edit)
                result = await self.build(s)
            self._check(s, result)
            self.bench.progress(s, False, result)
        return edit

    async def rounds(
        self,
        series: list[Series],
        rounds: int,
        path: Path,
        original: str,
        edit: source.Edit,
    ) -> None:
        for i in range(rounds):
            for s in series:
                if s.failure is not None:
                    continue
                warmup = self.bench.options.warmup
                counted = i >= warmup
                self.bench.building = (
                    (s, "counted", i - warmup + 1, self.bench.options.runs)
                    if counted
                    else (s, "warm-up", i + 1, warmup)
                )
                if s.mode == "clean":
                    await self.clean(s.config)
                    if s.cache == "cold" and self.cache is not None:
                        await self.cache.cold(s.config.apply_env(self.bench.env))
                else:
                    self._write(path, original, edit)
                result = await self.build(s)
                self._check(s, result)
                if counted and s.failure is None:
                    s.walls.append(result.wall_s)
                    s.results.append(result)
                self.bench.progress(s, counted, result)

    def _check(self, s: Series, result: BuildResult) -> None:
        if result.outcome != "success" and s.failure is None:
            first = (result.first_error or "").strip().splitlines()
            s.failure = f"build {result.outcome}" + (f": {first[0]}" if first else "")

    def _write(self, path: Path, original: str, edit: source.Edit) -> None:
        self.edits += 1
        source.write_own(path, edit.apply(original, self.edits))

    async def clean(self, config: configurations.BuildConfig) -> None:
        assert config.target_dir is not None
        argv = [self.base[0], "clean", "--target-dir", str(config.target_dir)]
        env = config.apply_env(self.bench.env)
        if configurations.uses_sccache(config):
            # cargo clean asks rustc about the target through the wrapper: an sccache
            # client would start a server of its own, on the user's port. "": none.
            env["RUSTC_WRAPPER"] = ""
        with anyio.fail_after(CLEAN_TIMEOUT_S):
            done = await anyio.run_process(
                argv,
                cwd=self.copy,
                env=env,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        if done.returncode != 0:
            raise ConfigError(f"cargo clean failed: {done.stderr.decode(errors='replace')}")

    async def build(self, s: Series) -> BuildResult:
        argv = s.config.argv(self.base)
        env = s.config.apply_env(self.bench.env)
        if self.cache is not None and configurations.uses_sccache(s.config):
            await self.cache.ready(env)
            env = self.cache.env(env)
        build = Build(
            argv,
            self.copy,
            env,
            self.timeout_s,
            lambda event: None,  # a bench's builds are not the project's builds
            # Without it the timings report's schema is unknown and the frontend/codegen
            # split of every bench row is lost.
            cargo_version=self.bench.workspace.cargo_version,
            shim=self.shim,
            user_wrapper=self.wrappers.get(s.config.name),
        )
        try:
            return await build.run()
        except anyio.get_cancelled_exc_class():
            # Cancelled (bench_cancel, shutdown, Ctrl-C): nothing of the build survives.
            await build.stop()
            raise


def _baseline(chosen: list[configurations.BuildConfig]) -> str:
    names = [c.name for c in chosen if c.available]
    return "default" if "default" in names else (names[0] if names else "default")


def _rows(
    chosen: list[configurations.BuildConfig], mode: str
) -> list[tuple[configurations.BuildConfig, Literal["cold", "warm"] | None]]:
    """The result rows of a mode, in the order the configurations were named (one for a
    configuration this machine lacks)."""
    rows: list[tuple[configurations.BuildConfig, Literal["cold", "warm"] | None]] = []
    for config in chosen:
        if mode == "clean" and config.available and configurations.uses_sccache(config):
            rows += [(config, "cold"), (config, "warm")]
        else:
            rows.append((config, None))
    return rows


def _median_run(s: Series) -> BuildResult:
    order = sorted(range(len(s.walls)), key=lambda i: s.walls[i])
    return s.results[order[(len(order) - 1) // 2]]


def _results(
    chosen: list[configurations.BuildConfig], series: list[Series], modes: tuple[str, ...]
) -> list[BenchResult]:
    baseline = _baseline(chosen)
    by_key = {(s.config.name, s.mode, s.cache): s for s in series}
    out: list[BenchResult] = []
    for mode in modes:
        base = by_key.get((baseline, mode, None))
        base_median = statistics.median(base.walls) if base and base.walls else None
        for config, cache in _rows(chosen, mode):
            s = by_key.get((config.name, mode, cache))
            row: BenchResult = {
                "config": config.name,
                "mode": mode,
                "available": config.available,
                "reason": config.reason if not config.available else s.failure if s else None,
                "mean_s": None,
                "stddev_s": None,
                "min_s": None,
                "median_s": None,
                "delta_s": None,
                "delta_pct": None,
                "noisy": None,
                "phases": None,
                "runs_s": [],
                "cache": cache,
                "sccache": None,
            }
            if s is not None and s.walls and s.failure is None:
                mean = statistics.fmean(s.walls)
                stddev = statistics.stdev(s.walls) if len(s.walls) > 1 else 0.0
                median = statistics.median(s.walls)
                row["mean_s"] = round(mean, 4)
                row["stddev_s"] = round(stddev, 4)
                row["min_s"] = round(min(s.walls), 4)
                row["median_s"] = round(median, 4)
                row["noisy"] = mean > 0 and stddev / mean > NOISY
                row["phases"] = phases_of(_median_run(s).phases)
                row["sccache"] = _median_run(s).sccache
                row["runs_s"] = [round(w, 4) for w in s.walls]
                if base_median:
                    row["delta_s"] = round(median - base_median, 4)
                    row["delta_pct"] = round(100 * (median - base_median) / base_median, 1)
            out.append(row)
    return out
