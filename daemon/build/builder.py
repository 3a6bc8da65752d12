"""Runs one cargo build in its own process group and reads what cargo says about it.

cargo runs with rbd's instrumentation (see `config.INSTRUMENTATION`): JSON
messages on stdout (artifacts, diagnostics, build-script runs), `-v` lines
on stderr (dirty reasons, each process cargo starts), the `--timings` report
it writes at the end (analysed by `timings`), and its progress bar forced on
(`CARGO_TERM_PROGRESS_WHEN=always`) for `N/M` progress, and the link times
rbd's rustc wrapper and linker shim record (see `shim`). None of this is part
of cargo's fingerprints: a plain `cargo build` afterwards finds every unit
fresh.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import ByteReceiveStream

from rbd.contract import protocol
from rbd.contract.schema import BuildCounts
from rbd.daemon.build import linker, procs, rootguard, sccache, timings
from rbd.daemon.build.records import BuildResult, UnitRecord
from rbd.daemon.build.shim import Shim, read_links

log = structlog.get_logger("builder")

PROGRESS = re.compile(r"^\s*Building \[[^\]]*\]\s+(\d+)/(\d+):?\s*(.*?)\s*$")
COMPILING = re.compile(r"^\s*Compiling (\S+) v")
# With -v: why cargo rebuilds a package, and each process it runs.
DIRTY = re.compile(r"^\s*Dirty (\S+) v\S+(?: \([^)]*\))?: (.*)$")
RUNNING = re.compile(r"^\s*Running `")
# What a `Running` line runs: rustc with `--crate-name X ... --crate-type T`, or a
# build script (target/<profile>/build/<package>-<hash>/build-script-build).
CRATE = re.compile(r"--crate-name (\S+)")
CRATE_TYPE = re.compile(r"--crate-type (\S+)")
SCRIPT_RUN = re.compile(r"/build/([^/\s`]+)-[0-9a-f]{16}/build-script-build")
# cargo's line for a unit that failed: `could not compile `p` (lib)`, `(bin "x")`, `(lib
# test)`; a build script run that failed.
COULD_NOT = re.compile(r'^error: could not compile `([^`]+)` \((\w[\w-]*)(?: "([^"]+)")?')
SCRIPT_FAILED = re.compile(r"^error: failed to run custom build command for `(\S+) v")
# cargo names the lock it waits for: "on artifact directory" (target/<profile>, another
# cargo building into the same target dir: rust-analyzer, a terminal), "on build
# directory" (the same with a separate build-dir), or "on package cache" (another cargo
# downloading, or only reading the cache: `cargo clean --dry-run` holds it), as cargo
# 1.95 prints them. Only a wait on a directory is a lock wait (lock_wait_s, which the
# rust-analyzer-target-dir suggestion argues from); a package-cache wait stays overhead.
LOCK_WAIT = re.compile(r"^\s*Blocking waiting for file lock(?: on (.*?))?\s*$")
REPORT = re.compile(r"^\s*Timing report saved to (.+?)\s*$")
# File timestamps may be coarser than the clock (some filesystems keep 1 ms or worse).
MTIME_SLACK_NS = 5_000_000
LIBRARY_KINDS = ("lib", "rlib", "proc-macro", "dylib", "cdylib", "staticlib")
LINKED_SUFFIXES = (".rmeta", ".rlib", ".d", ".a", ".lib")
MAX_STDERR_KEEP = 200
# How long a successful build's analysis waits for run mode's restart to get going.
HOLD_FOR_RESTART_S = 0.5

EventSink = Callable[[dict[str, Any]], None]


def package_name(package_id: str) -> str:
    """The package name in a cargo package id (`...#name@1.0.0`, or `path+file:///x/name#1.0.0`)."""
    url, _, fragment = package_id.partition("#")
    if "@" in fragment:
        return fragment.split("@", 1)[0]
    return url.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0]


def _is_summary(message: dict[str, Any]) -> bool:
    # "aborting due to 2 previous errors" and "3 warnings emitted" repeat what was said.
    text = str(message.get("message", ""))
    return not message.get("spans") and (
        text.startswith("aborting due to") or re.search(r"\d+ warnings? emitted", text) is not None
    )


class Build:
    """One cargo run. `run()` returns its result; `cancel()` ends it early."""

    def __init__(
        self,
        argv: list[str],
        cwd: Path,
        env: dict[str, str],
        timeout_s: float,
        emit: EventSink,
        cargo_version: tuple[int, int] | None = None,
        on_spawn: Callable[[Build], None] | None = None,
        on_success: Callable[[Build], anyio.Event | None] | None = None,
        shim: Shim | None = None,
        user_wrapper: str | None = None,
    ) -> None:
        self.argv = argv
        self.cwd = cwd
        # As given: what the CARGO_TERM_* variables below were (see sccache.TERM_CONFIG).
        self._given_env = env
        self.env = {
            **env,
            "CARGO_TERM_PROGRESS_WHEN": "always",
            "CARGO_TERM_PROGRESS_WIDTH": "1000",
            "CARGO_TERM_COLOR": "never",
        }
        self.timeout_s = timeout_s
        self.emit = emit
        self.pgid: int | None = None
        self.pg_start: int | None = None
        # In the environment of cargo and of every process it starts (see `procs`).
        self.marker = procs.new_marker()
        self.spawned = anyio.Event()
        self.spawned_at = 0.0
        self.done = 0
        self.total: int | None = None
        self.active: list[str] = []
        self._cancelled = False
        self._started: dict[str, float] = {}
        self.spawned_wall_ns = 0
        # Wall clock (ns) once cargo exited; 0 while it runs.
        self.exited_wall_ns = 0
        # (start, end) mtimes, in ns, of each build script run of this build.
        self._script_runs: list[tuple[int, int]] = []
        # Build scripts cargo said it runs (`Running` line) and has not reported done:
        # package -> wall clock (ns) then. What they write before cargo reports them is
        # theirs too (seen under load: a script's write judged before its report came).
        self._scripts_running: dict[str, int] = {}
        self._stderr: list[str] = []
        self.cargo_version = cargo_version
        # Called as soon as cargo runs, before any of its output is read.
        self._on_spawn = on_spawn
        # Called as soon as cargo exited successfully, before rbd's sweep and analysis
        # (run mode restarts the app from here: about 13 ms sooner, measured); the event
        # it may return is awaited (at most HOLD_FOR_RESTART_S) before them.
        self._on_success = on_success
        self._dirty: dict[str, str] = {}
        # Units cargo started, by (crate name or package, crate type), with when rbd saw
        # them start; the ones that failed; the kind each artifact gave.
        self._running: dict[tuple[str, str], float] = {}
        self._failed: list[timings.FailedUnit] = []
        self._artifact_kinds: dict[tuple[str, str], str] = {}
        self._first_unit: float | None = None
        self._lock_since: float | None = None
        self._lock_wait = 0.0
        self._report: Path | None = None
        self._executables: list[Path] = []
        self.result = BuildResult(outcome="success", wall_s=0.0, rustc_wrapper=user_wrapper)
        # rbd's rustc wrapper and linker shim (link times); None runs cargo as is.
        self._shim = shim
        self._timing_dir: Path | None = None

    def progress(self) -> BuildCounts:
        return {
            "done": self.done,
            "total": self.total,
            "active": self.active,
            "elapsed_s": round(time.monotonic() - self.spawned_at, 3) if self.spawned_at else 0.0,
        }

    def cancel(self) -> None:
        """Kill cargo's group and its descendants now; what carries the build's marker
        elsewhere is killed by the `kill_build_and_wait` that follows in run() or stop()."""
        self._cancelled = True
        if self.pgid is not None:
            procs.kill_tree(self.pgid)

    async def stop(self) -> BuildResult:
        """End a build whose run() its caller's cancellation interrupted: kill its process
        group and wait until none of it is left, so nothing of the build outlives it.
        Shielded, so that it completes inside the cancelled scope. Returns the result,
        marked `cancelled`, with the wall time up to now."""
        with anyio.CancelScope(shield=True):
            self.cancel()
            if self.pgid is not None:
                await procs.kill_build_and_wait(self.marker, self.pgid)
        self.result.outcome = "cancelled"
        self.result.wall_s = time.monotonic() - self.spawned_at
        return self.result

    def owns_write(self, relative: str) -> bool | None:
        """Whether the current content of a changed file was written by this build; None
        while a build script that may have written it runs (the scheduler then waits a
        little for cargo to report it).

        cargo writes Cargo.lock while resolving. A build script runs between
        cargo's `invoked.timestamp` (touched just before the script starts,
        for its own rerun-if-changed checks) and cargo's report of it: a file
        whose mtime falls in such a run was written by the script. Deciding
        by mtime, not by when the event arrived, keeps a user's edit made
        during or after the build a change.
        """
        try:
            mtime = (self.cwd / relative).stat().st_mtime_ns
        except OSError:
            return False
        if Path(relative).name == "Cargo.lock":
            # Written by cargo while it ran: a `cargo update` after it exited is the user's.
            ended = self.exited_wall_ns or mtime
            return self.spawned_wall_ns - MTIME_SLACK_NS <= mtime <= ended + MTIME_SLACK_NS
        if any(
            start - MTIME_SLACK_NS <= mtime <= end + MTIME_SLACK_NS
            for start, end in self._script_runs
        ):
            return True
        if any(mtime >= start - MTIME_SLACK_NS for start in self._scripts_running.values()):
            # A script still running may have written it: told once cargo reports it.
            return None
        return False

    async def run(self) -> BuildResult:
        env = self.env
        if self._shim is not None:
            self._timing_dir = Path(tempfile.mkdtemp(prefix="rbd-links-"))
            env = self._shim.build_env(env, self.result.rustc_wrapper, self._timing_dir)
        # Which directories the project's path named at the start: cargo recreates a
        # root that moved away mid-build (see rootguard).
        before = rootguard.lineage(self.cwd)
        wrapper = self.result.rustc_wrapper
        counter = None
        if wrapper is not None and sccache.is_sccache(wrapper):
            await sccache.ensure_server(wrapper, self.env)
            self.argv, env = sccache.with_term_config(self.argv, env, self._given_env)
            counter = sccache.Counter(wrapper, self.env)
        try:
            result = await self._run(env, counter)
            if self.spawned_wall_ns and rootguard.identity(self.cwd) != before[0][1]:
                await anyio.to_thread.run_sync(
                    rootguard.remove_recreated, before, self.spawned_wall_ns
                )
            return result
        finally:
            if self._timing_dir is not None:
                shutil.rmtree(self._timing_dir, ignore_errors=True)

    async def _run(self, env: dict[str, str], counter: sccache.Counter | None) -> BuildResult:
        result = self.result
        self.spawned_at = time.monotonic()
        self.spawned_wall_ns = time.time_ns()
        try:
            with procs.spawning():
                process = await anyio.open_process(
                    self.argv,
                    cwd=self.cwd,
                    env={**env, procs.MARKER: self.marker},
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                )
                procs.lead(process.pid)
        except OSError as exc:
            result.outcome = "failure"
            result.first_error = f"cannot run {self.argv[0]}: {exc}"
            result.wall_s = time.monotonic() - self.spawned_at
            return result
        self.pgid = process.pid
        self.pg_start = procs.start_ticks(process.pid)
        if self._cancelled:
            # cancel() came before cargo had a group to kill: cargo would run to its end.
            procs.kill_tree(self.pgid)
        if self._on_spawn is not None:
            self._on_spawn(self)
        self.spawned.set()
        timed_out = False
        assert process.stdout is not None and process.stderr is not None
        with anyio.move_on_after(self.timeout_s) as scope:
            async with anyio.create_task_group() as tg:
                if counter is not None:
                    # Once cargo runs, off the way from a save to it (see sccache).
                    tg.start_soon(counter.before, lambda: self._first_unit is not None)
                tg.start_soon(self._read_lines, process.stdout, b"\n", self._on_stdout)
                tg.start_soon(self._read_lines, process.stderr, b"\r\n", self._on_stderr)
            await process.wait()
        self.exited_wall_ns = time.time_ns()
        if scope.cancelled_caught:
            timed_out = True
        # A build that ran to its end took until cargo exited: the sweep below is rbd's
        # own (a scan of /proc, about 2 ms for 66 processes here, more on a busy desktop).
        ended = time.monotonic()
        if (
            self._on_success is not None
            and not timed_out
            and not self._cancelled
            and process.returncode == 0
        ):
            restarted = self._on_success(self)
            if restarted is not None:
                # The analysis is Python work in a thread: run beside the restart, it
                # holds the GIL the restart's own steps wait for (measured: stopping the
                # old app took 14 ms then, 3.6 ms alone). The build's times are taken.
                with anyio.CancelScope(shield=True), anyio.move_on_after(HOLD_FOR_RESTART_S):
                    await restarted.wait()
        with anyio.CancelScope(shield=True):
            if timed_out or self._cancelled:
                await procs.kill_build_and_wait(self.marker, self.pgid)
                await process.wait()
                ended = time.monotonic()
            else:
                # cargo exited but may have left something running (a build
                # script's daemonized child): it must not outlive the build.
                await procs.kill_build_and_wait(self.marker, self.pgid)
        result.wall_s = ended - self.spawned_at
        if timed_out:
            result.outcome = "timeout"
            result.first_error = f"build killed after the {self.timeout_s:g} s timeout"
        elif self._cancelled:
            result.outcome = "cancelled"
        elif process.returncode == 0:
            result.outcome = "success"
        else:
            result.outcome = "failure"
            if result.first_error is None:
                result.first_error = (
                    self._cargo_error() or f"cargo exited with {process.returncode}"
                )
        if result.outcome == "failure" and not result.diagnostics:
            result.diagnostics = "\n".join(self._stderr)
        if counter is not None:
            # Its stats read beside the analysis, which waits on a thread.
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._count, counter)
                if result.outcome in ("success", "failure"):
                    await anyio.to_thread.run_sync(self._analyze)
        elif result.outcome in ("success", "failure"):
            await anyio.to_thread.run_sync(self._analyze)
        return result

    async def _count(self, counter: sccache.Counter) -> None:
        self.result.sccache = await counter.after()

    def _analyze(self) -> None:
        """After cargo exited: the timings report, and which linker linked."""
        result = self.result
        observed = timings.Observed(
            wall_s=result.wall_s,
            spawned_wall_ns=self.spawned_wall_ns,
            first_unit_s=None if self._first_unit is None else self._first_unit - self.spawned_at,
            lock_wait_s=self._lock_wait,
            dirty=self._dirty,
            links=None if self._timing_dir is None else read_links(self._timing_dir),
            failed=self._failed,
            artifact_kinds=self._artifact_kinds,
        )
        timings.apply_report(result, self._report, self.cargo_version, observed)
        for executable in reversed(self._executables):
            found = linker.identify(executable)
            if found != "unknown":
                self.result.linker_seen = found
                break

    async def _read_lines(
        self, stream: ByteReceiveStream, separators: bytes, handle: Callable[[str], None]
    ) -> None:
        pending = b""
        pattern = re.compile(b"[" + re.escape(separators) + b"]")
        async for chunk in stream:
            pending += chunk
            *lines, pending = pattern.split(pending)
            for line in lines:
                if line:
                    handle(line.decode(errors="replace"))
        if pending:
            handle(pending.decode(errors="replace"))

    def _on_stderr(self, line: str) -> None:
        now = time.monotonic()
        if match := PROGRESS.match(line):
            self.done, self.total = int(match[1]), int(match[2])
            self.active = [name.strip() for name in match[3].split(",") if name.strip()]
            self.emit({"event": protocol.BUILD_PROGRESS, **self.progress()})
            return
        if self._lock_since is not None:
            # Whatever cargo says next, it has the lock.
            self._lock_wait += now - self._lock_since
            self._lock_since = None
        if match := LOCK_WAIT.match(line):
            # A package-cache wait stays overhead: a target dir of its own avoids none of it.
            if "directory" in (match[1] or "directory"):
                self._lock_since = now
        elif match := COMPILING.match(line):
            self._started.setdefault(match[1], now)
            if self._first_unit is None:
                self._first_unit = now
        elif RUNNING.match(line):
            if self._first_unit is None:
                self._first_unit = now
            self._on_running(line, now)
            return  # full command lines: long, and not what a user wants in diagnostics
        elif match := COULD_NOT.match(line):
            self._on_failed(match[1], match[2], match[3], now)
        elif match := SCRIPT_FAILED.match(line):
            self._on_failed(match[1], "build-script-run", None, now)
        elif match := DIRTY.match(line):
            self._dirty[match[1]] = match[2]
        elif match := REPORT.match(line):
            self._report = self.cwd / match[1]
        self._stderr.append(line.rstrip())
        del self._stderr[:-MAX_STDERR_KEEP]

    def _on_running(self, line: str, now: float) -> None:
        if match := SCRIPT_RUN.search(line):
            self._running[(match[1], "build-script-run")] = now
            self._scripts_running[match[1]] = time.time_ns()
        elif match := CRATE.search(line):
            crate_type = CRATE_TYPE.search(line)
            kind = crate_type[1] if crate_type else "bin"
            # A test harness is built with --test, no crate type.
            self._running[(match[1], "test" if " --test " in line else kind)] = now

    def _on_failed(self, package: str, kind: str, name: str | None, now: float) -> None:
        """A unit cargo ran failed: timed from its `Running` line to cargo's error line."""
        crate = (name or package).replace("-", "_")
        if kind == "build-script-run":
            keys = [(package, kind)]
            target = "build-script-build"
        elif kind == "lib":
            keys = [(crate, t) for t in ("lib", "rlib", "proc-macro", "dylib", "cdylib")]
            keys.append((crate, "test"))
            target = crate
        else:
            keys = [(crate, "test" if kind == "test" else kind)]
            target = name or package
        start = next((self._running[k] for k in keys if k in self._running), None)
        if start is None:
            start = self._started.get(package)
        if start is None:
            return
        self._failed.append(
            timings.FailedUnit(
                package=package,
                target=target,
                kind=kind,
                start_s=start - self.spawned_at,
                end_s=now - self.spawned_at,
            )
        )

    def _on_stdout(self, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return  # a build script or proc macro printing to stdout
        if not isinstance(message, dict):
            return
        reason = message.get("reason")
        if reason == "compiler-artifact":
            self._on_artifact(message)
        elif reason == "compiler-message":
            self._on_diagnostic(message.get("message") or {})
        elif reason == "build-script-executed":
            self._scripts_running.pop(package_name(str(message.get("package_id", ""))), None)
            self._on_script_run(str(message.get("out_dir", "")))

    def _on_script_run(self, out_dir: str) -> None:
        # cargo reports fresh build scripts too; only a run of this build counts. The run
        # ends by the time cargo reports it, not at its `output` file's mtime: cargo sets
        # that to the run's start (seen: both equal, and the script's own write 8 ms
        # later, judged the user's: the build cancelled and run again).
        unit_dir = Path(out_dir).parent
        try:
            start = (unit_dir / "invoked.timestamp").stat().st_mtime_ns
        except OSError:
            return
        if start >= self.spawned_wall_ns - MTIME_SLACK_NS:
            self._script_runs.append((start, max(start, time.time_ns())))

    def _on_artifact(self, message: dict[str, Any]) -> None:
        now = time.monotonic()
        result = self.result
        target = message.get("target") or {}
        kinds = target.get("kind") or ["unknown"]
        package = package_name(str(message.get("package_id", "")))
        fresh = bool(message.get("fresh"))
        if "bin" in kinds and message.get("executable"):
            result.executables[str(target.get("name", package))] = str(message["executable"])
        if kinds[0] in LIBRARY_KINDS:
            # cargo's report calls all of these "lib"; a bin may share the lib's name.
            name = str(target.get("name", package)).replace("-", "_")
            self._artifact_kinds[(package, name)] = str(kinds[0])
        if fresh:
            result.units_fresh += 1
            return
        result.units_rebuilt += 1
        filenames = [str(f) for f in message.get("filenames") or []]
        if any(not f.endswith(LINKED_SUFFIXES) for f in filenames):
            result.linked = True
        if message.get("executable"):
            self._executables.append(Path(str(message["executable"])))
        # A unit starts when cargo says "Compiling" for its package or, for a
        # package's later units (bin after lib), when the previous one ended.
        start = self._started.get(package)
        total = None if start is None else now - start
        if start is not None:
            self._started[package] = now
        unit = UnitRecord(
            name=package,
            target=str(target.get("name", package)),
            kind=str(kinds[0]),
            start_s=None if start is None else round(start - self.spawned_at, 4),
            total_s=None if total is None else round(total, 4),
        )
        result.units.append(unit)
        self.emit({"event": protocol.UNIT_FINISHED, **unit.to_json(), "duration_s": unit.total_s})

    def _on_diagnostic(self, diagnostic: dict[str, Any]) -> None:
        level = diagnostic.get("level")
        if level not in ("error", "warning") or _is_summary(diagnostic):
            return
        result = self.result
        rendered = str(diagnostic.get("rendered") or diagnostic.get("message") or "")
        if level == "error":
            result.errors += 1
            if result.first_error is None:
                result.first_error = rendered.strip()
        else:
            result.warnings += 1
        result.diagnostics += rendered if rendered.endswith("\n") else rendered + "\n"

    def _cargo_error(self) -> str | None:
        """cargo's own error (bad manifest, missing member...), from its stderr."""
        for i, line in enumerate(self._stderr):
            if line.startswith("error"):
                block = [line]
                for more in self._stderr[i + 1 : i + 12]:
                    if not more.strip() or more.startswith(("error", "warning")):
                        break
                    block.append(more)
                return "\n".join(block)
        return None
