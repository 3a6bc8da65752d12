"""Build metrics for Prometheus, the way a daemon without an HTTP port offers them: a
`.prom` file that node_exporter's textfile collector reads and serves on its own port.

A project names the file (`metrics_textfile`, daemon.projects.settings). One file per
path: it holds every watched project naming that path, each series labelled by
`project`, the project's root path (so the labels are bounded by the projects this
daemon watches). A project that stops naming the path (`rbd start` with another
setting, `rbd stop`) leaves the file at once (it is rewritten); a file no project names
any more is removed. At the daemon's shutdown the file is left as it is: its numbers stay
true, and node_exporter's `node_textfile_mtime_seconds` says how old they are.

Counters start at zero with the daemon, as any process's do: Prometheus' rate() and
increase() take a counter reset in their stride, and seeding from the store would
make a restart read its whole history for numbers Prometheus has scraped already.

The file is rewritten after every finished build (`build_finished`) and every ready
app in run mode (`app_ready`), atomically: a temporary file in the same directory
(not `*.prom`, so never read), fsync'd, then renamed over the old one, so node_exporter
reads the old file or the new one, never half of one. Its mode is 0644: node_exporter
runs as another user (Debian's: `prometheus`). What it exposes is what node_exporter
serves to whoever scrapes it anyway: numbers, crate names, project paths. No
environment, command line, source path or compiler message is written.

Events are read as they come (the hub drops a subscriber that falls behind) and only
update counters in memory; the file is written by a task of its own, in a worker
thread, so a slow or full disk never delays an event, a build or its record. A write
that fails (full disk, unwritable directory) is logged once, tried again at every
build and every RETRY_S, and its recovery logged once.

Measured (benchmarks/metrics_bench.py, 2 cores, p50): counting a build of 60 units
0.07 ms and rendering the file 0.2 ms (1.4 ms for ten projects sharing it) on the event
loop; replacing it about 4 ms, mostly fsync, in the worker thread, after the build's
record. Without the setting the daemon never imports this module (daemon.app).
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
import structlog

from rbd.contract import protocol
from rbd.contract.schema import AppReady, BuildFinished, BuildSummary, Unit
from rbd.daemon.rpc.events import EventHub

log = structlog.get_logger("metrics")

# Upper bounds of the duration buckets, seconds: fine where rebuilds after a save fall
# (0.1-10 s, where histogram_quantile interpolates between bounds), coarse up to the
# ten minutes of a cold build of a large workspace. 15 buckets and +Inf.
BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# Crates with a series of their own, per project; the rest are summed in OTHER_CRATE.
TOP_CRATES = 10
# Not a crate name cargo accepts (letters, digits, `-`, `_`): no crate can be it.
OTHER_CRATE = "(other)"
# A build's kind or outcome when it has none (a cancelled build has no kind).
UNKNOWN = "unknown"
# The phases that add up to a build's wall time (`frontend_s` and `codegen_s` are
# parts of `compile_s`, and null for most builds: summing them would count twice).
PHASES = ("overhead", "queue", "compile", "link", "build_script", "lock_wait", "other")
# node_exporter (another user) reads it; see the module's docstring.
FILE_MODE = 0o644
# How often a file that could not be written is tried again without a new build.
RETRY_S = 10.0
# At shutdown: how long the builds that just ended get to reach the file.
FINAL_WRITE_S = 2.0

HEADER = "# rbd's build metrics, rewritten by rbd's daemon after every build.\n"


@dataclass(frozen=True)
class Family:
    """One metric family as the file declares it (its HELP and TYPE lines)."""

    name: str
    type: str
    labels: tuple[str, ...]
    help: str


# The metric names, pinned by tests/test_metrics.py and listed in the README: renaming
# one breaks every dashboard and alert built on it.
FAMILIES = (
    Family(
        "rbd_build_duration_seconds",
        "histogram",
        ("project", "kind", "outcome"),
        "Wall time of rbd's builds, cargo's spawn to its exit.",
    ),
    Family(
        "rbd_builds_total",
        "counter",
        ("project", "kind", "outcome"),
        "Builds rbd finished.",
    ),
    Family(
        "rbd_build_phase_seconds_total",
        "counter",
        ("project", "kind", "phase"),
        "Seconds of the builds' critical path by phase; the phases add up to the wall time.",
    ),
    Family(
        "rbd_build_units_rebuilt_total",
        "counter",
        ("project", "kind"),
        "Compilation units the builds ran (build-script runs and failed units too).",
    ),
    Family(
        "rbd_crate_compile_seconds_total",
        "counter",
        ("project", "crate"),
        f"Seconds of each crate's units (rustc, build scripts): the {TOP_CRATES} crates"
        f' taking most in this daemon\'s life, the rest as crate="{OTHER_CRATE}".',
    ),
    Family(
        "rbd_save_to_serving_seconds",
        "histogram",
        ("project",),
        "Run mode: the first change rbd saw to the rebuilt app being ready.",
    ),
    Family(
        "rbd_last_build_timestamp_seconds",
        "gauge",
        ("project",),
        "When the project's last build finished, seconds since the epoch.",
    ),
)


class Histogram:
    """Observations counted in BUCKETS_S (each in the first bucket its value fits)."""

    def __init__(self) -> None:
        self.counts = [0] * len(BUCKETS_S)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # A negative time (a clock step) would make the sum, a counter, go down.
        value = max(0.0, value)
        self.count += 1
        self.sum += value
        index = bisect_left(BUCKETS_S, value)
        if index < len(self.counts):
            self.counts[index] += 1

    def lines(self, name: str, labels: str) -> Iterator[str]:
        cumulative = 0
        for bound, count in zip(BUCKETS_S, self.counts, strict=True):
            cumulative += count
            yield f'{name}_bucket{{{labels},le="{bound:g}"}} {cumulative}'
        yield f'{name}_bucket{{{labels},le="+Inf"}} {self.count}'
        yield f"{name}_sum{{{labels}}} {_number(self.sum)}"
        yield f"{name}_count{{{labels}}} {self.count}"


class CrateSeconds:
    """A project's seconds per crate, as a bounded set of counters.

    The TOP_CRATES crates with the most seconds so far (in this daemon's life) have a
    series each; every other crate's seconds go to OTHER_CRATE. A crate's series counts
    only the seconds it had while in the top set, and a crate leaving the set keeps its
    count for when it comes back: so every series only grows (no false counter reset for
    rate()), and the series of a project add up to all its crates' seconds, none counted
    twice. What is kept in memory is bounded by the project's crates.
    """

    def __init__(self, top: int = TOP_CRATES) -> None:
        self.top = top
        self.cumulative: dict[str, float] = {}
        self.counted: dict[str, float] = {}
        self.members: frozenset[str] = frozenset()
        self.other = 0.0

    def add(self, seconds: Mapping[str, float]) -> None:
        for crate, value in seconds.items():
            self.cumulative[crate] = self.cumulative.get(crate, 0.0) + value
        ranked = sorted(self.cumulative.items(), key=lambda item: (-item[1], item[0]))
        self.members = frozenset(crate for crate, _ in ranked[: self.top])
        for crate, value in seconds.items():
            if crate in self.members:
                self.counted[crate] = self.counted.get(crate, 0.0) + value
            else:
                self.other += value

    def series(self) -> list[tuple[str, float]]:
        """(crate, seconds) of each series, OTHER_CRATE last; empty before any seconds."""
        if not self.cumulative:
            return []
        found = [(crate, self.counted.get(crate, 0.0)) for crate in sorted(self.members)]
        return [*found, (OTHER_CRATE, self.other)]


@dataclass
class ProjectMetrics:
    """One project's counters in this daemon's life."""

    durations: dict[tuple[str, str], Histogram] = field(default_factory=dict)
    builds: dict[tuple[str, str], int] = field(default_factory=dict)
    phases: dict[tuple[str, str], float] = field(default_factory=dict)
    units_rebuilt: dict[str, int] = field(default_factory=dict)
    crates: CrateSeconds = field(default_factory=CrateSeconds)
    serving: Histogram | None = None
    last_build_at: float | None = None

    def build_finished(self, build: BuildSummary, units: list[Unit], at: float) -> None:
        """A finished build (its summary and units), at `at` seconds since the epoch."""
        kind = build["kind"] or UNKNOWN
        outcome = build["outcome"] or UNKNOWN
        key = (kind, outcome)
        self.builds[key] = self.builds.get(key, 0) + 1
        if build["wall_s"] is not None:
            self.durations.setdefault(key, Histogram()).observe(build["wall_s"])
        phases = cast(Mapping[str, float | None], build["phases"])
        for phase in PHASES:
            value = phases.get(f"{phase}_s")
            if value is not None:
                # Never negative: a counter that went down would read as a reset.
                self.phases[(kind, phase)] = self.phases.get((kind, phase), 0.0) + max(0.0, value)
        if build["units_rebuilt"] is not None:
            self.units_rebuilt[kind] = self.units_rebuilt.get(kind, 0) + build["units_rebuilt"]
        seconds: dict[str, float] = {}
        for unit in units:
            total = unit["total_s"]
            if not unit["fresh"] and unit["name"] and total is not None and total > 0:
                seconds[unit["name"]] = seconds.get(unit["name"], 0.0) + total
        if seconds:
            self.crates.add(seconds)
        self.last_build_at = at

    def app_ready(self, serving_s: float | None) -> None:
        """Run mode's app is ready; serving_s: from the first change rbd saw (None: no save)."""
        if serving_s is not None:
            if self.serving is None:
                self.serving = Histogram()
            self.serving.observe(serving_s)


def label_value(value: str) -> str:
    """value as the text format quotes it: valid UTF-8 (a path's undecodable bytes
    become U+FFFD), with backslash, double quote and line feed escaped."""
    try:
        raw = value.encode("utf-8", "surrogateescape")  # the path's own bytes
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "replace")
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(*pairs: tuple[str, str]) -> str:
    return ",".join(f'{name}="{label_value(value)}"' for name, value in pairs)


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else repr(float(value))


def _samples(name: str, key: str, metrics: ProjectMetrics) -> Iterator[str]:
    """The sample lines of family `name` for the project `key`."""
    project = ("project", key)
    if name == "rbd_build_duration_seconds":
        for (kind, outcome), histogram in sorted(metrics.durations.items()):
            yield from histogram.lines(name, _labels(project, ("kind", kind), ("outcome", outcome)))
    elif name == "rbd_builds_total":
        for (kind, outcome), count in sorted(metrics.builds.items()):
            labels = _labels(project, ("kind", kind), ("outcome", outcome))
            yield f"{name}{{{labels}}} {count}"
    elif name == "rbd_build_phase_seconds_total":
        in_order = sorted(metrics.phases.items(), key=lambda i: (i[0][0], PHASES.index(i[0][1])))
        for (kind, phase), seconds in in_order:
            labels = _labels(project, ("kind", kind), ("phase", phase))
            yield f"{name}{{{labels}}} {_number(seconds)}"
    elif name == "rbd_build_units_rebuilt_total":
        for kind, count in sorted(metrics.units_rebuilt.items()):
            yield f"{name}{{{_labels(project, ('kind', kind))}}} {count}"
    elif name == "rbd_crate_compile_seconds_total":
        for crate, seconds in metrics.crates.series():
            yield f"{name}{{{_labels(project, ('crate', crate))}}} {_number(seconds)}"
    elif name == "rbd_save_to_serving_seconds":
        if metrics.serving is not None:
            yield from metrics.serving.lines(name, _labels(project))
    elif name == "rbd_last_build_timestamp_seconds":
        if metrics.last_build_at is not None:
            yield f"{name}{{{_labels(project)}}} {_number(round(metrics.last_build_at, 3))}"
    else:
        raise ValueError(f"no such metric family: {name}")


def render(projects: Mapping[str, ProjectMetrics]) -> str:
    """The file's text for these projects (by root), in the text exposition format:
    each family once, its HELP and TYPE lines first, only families with samples."""
    lines = [HEADER.rstrip("\n")]
    for family in FAMILIES:
        samples = [
            line for key in sorted(projects) for line in _samples(family.name, key, projects[key])
        ]
        if samples:
            lines.append(f"# HELP {family.name} {family.help}")
            lines.append(f"# TYPE {family.name} {family.type}")
            lines.extend(samples)
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, data: bytes) -> None:
    """Replace path by a file holding data, mode FILE_MODE, so that a reader sees the old
    file or the new one whole. Raises OSError (nothing is left behind then)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "wb") as file:
            os.fchmod(file.fileno(), FILE_MODE)
            file.write(data)
            file.flush()
            # Renamed only once on disk: after a crash, the old file or the new one.
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _by_path(targets: Mapping[str, str]) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for project, path in targets.items():
        found.setdefault(path, set()).add(project)
    return {path: frozenset(projects) for path, projects in found.items()}


class TextfileExporter:
    """Every watched project's builds, into the files the projects name.

    Which project names which file is told by `follow` (the daemon calls it whenever a
    project is started, re-configured or stopped); the builds come from the EventHub,
    subscribed to from construction on, so nothing published after it is missed.
    """

    def __init__(
        self,
        hub: EventHub,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.hub = hub
        self.retry_s = retry_s
        self.clock = clock
        self.projects: dict[str, ProjectMetrics] = {}
        self._subscription = hub.subscribe(None)
        # project root -> its file; file -> the projects naming it.
        self._paths: dict[str, str] = {}
        self._wanted: dict[str, frozenset[str]] = {}
        # The projects each file was last written with (a file missing here: none yet).
        self._written: dict[str, frozenset[str]] = {}
        self._dirty: set[str] = set()
        # Files whose last write failed, with why (logged once, when it started failing).
        self.failing: dict[str, str] = {}
        self._wake = anyio.Event()

    def follow(self, targets: Mapping[str, str]) -> None:
        """The watched projects naming a file now (root -> path): the files whose
        projects changed are rewritten (or removed, when none names them any more), and
        a project naming none is forgotten (its counters restart if it names one again)."""
        self._paths = dict(targets)
        self._wanted = _by_path(targets)
        for key in [key for key in self.projects if key not in targets]:
            del self.projects[key]
        for path in set(self._wanted) | set(self._written):
            if self._wanted.get(path) != self._written.get(path):
                self._dirty.add(path)
        self._wake.set()

    def take(self, event: Mapping[str, Any]) -> None:
        """One event from the hub: a finished build or a ready app of a project naming
        a file updates its counters, and marks the file to be rewritten."""
        name = event.get("event")
        if name not in (protocol.BUILD_FINISHED, protocol.APP_READY):
            return
        key = event.get("project")
        path = self._paths.get(key) if isinstance(key, str) else None
        if key is None or path is None:
            return
        metrics = self.projects.setdefault(key, ProjectMetrics())
        if name == protocol.BUILD_FINISHED:
            finished = cast(BuildFinished, event)
            metrics.build_finished(finished["build"], finished["units"], self.clock())
        else:
            metrics.app_ready(cast(AppReady, event)["app"]["serving_s"])
        self._dirty.add(path)
        self._wake.set()

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Read the events and write the files until cancelled; then write what the
        last events changed (FINAL_WRITE_S at most) and unsubscribe. Raises nothing but
        cancellation: a bug of its own is logged (`metrics_failed`) and ends the
        exporting, never the daemon or its builds."""
        log.info("metrics_started", files=sorted(self._wanted))
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._read)
                tg.start_soon(self._write_loop)
                task_status.started()
        except Exception:
            log.exception("metrics_failed")
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(FINAL_WRITE_S):
                try:
                    await self._last_write()
                except Exception:
                    log.exception("metrics_failed")
            self.hub.unsubscribe(self._subscription)
            self._subscription.receive.close()

    async def _last_write(self) -> None:
        while True:
            try:
                self.take(self._subscription.receive.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
        if self._dirty:
            await self.write_pending()

    async def _read(self) -> None:
        while True:
            async for event in self._subscription.receive:
                self.take(event)
            # Dropped by the hub: its buffer filled while the daemon was too busy to
            # read. Builds finished meanwhile are missing from the counters.
            log.warning("metrics_resubscribed")
            self._subscription = self.hub.subscribe(None)

    async def _write_loop(self) -> None:
        while True:
            if not self._dirty:
                with anyio.move_on_after(self.retry_s if self.failing else math.inf):
                    await self._wake.wait()
            self._wake = anyio.Event()
            await self.write_pending()

    async def write_pending(self) -> None:
        """Write (or remove) each file changed since its last write, and retry those that
        failed. Rendered here, on the event loop, where the counters change; written in a
        worker thread."""
        paths = sorted(self._dirty | set(self.failing))
        self._dirty.clear()
        for path in paths:
            members = self._wanted.get(path, frozenset())
            action: Callable[[], None]
            if members:
                text = render({key: self.projects[key] for key in members if key in self.projects})
                action = partial(write_atomically, Path(path), text.encode())
            elif path in self._written:
                # No project names it any more: left, it would be served as if current.
                action = partial(_remove, Path(path))
            else:
                self.failing.pop(path, None)
                continue
            try:
                await anyio.to_thread.run_sync(action)
            except OSError as exc:
                if path not in self.failing:
                    log.error("metrics_write_failed", path=path, error=str(exc))
                self.failing[path] = str(exc)
                continue
            if self.failing.pop(path, None) is not None:
                log.info("metrics_write_recovered", path=path)
            if members:
                self._written[path] = members
            else:
                self._written.pop(path, None)
