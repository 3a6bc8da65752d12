"""Where a build's time went: the critical path through cargo's unit graph, in phases.

Input: cargo's `--timings` report (read by `report`), and what rbd saw itself
(`Observed`: cargo's spawn, its exit, lock waits, units that failed, link
times from rbd's linker shim).

The path. cargo's report says, for each unit, which units became ready when
it finished (`unblocked_units`) or when its metadata was ready
(`unblocked_rmeta_units`, pipelining): the last dependency each unit waited
for, build-script runs included. From the unit that finished last, the path
goes back along those edges to a unit that waited for no other. Each unit on
it counts from its start to the moment it unblocked the next (its metadata,
for a pipelined edge: the rest of its codegen ran beside the next unit).

The gaps. Between a unit becoming ready and starting, cargo either ran other
units (every job slot taken: `queue`) or ran none (cargo's own work:
`overhead` before the build's first unit, `other` after it). On a first build
on 2 cores most of the path is queue: units were ready and waited for a core
(measured on the webapp: 89 units, other 83% of wall before the queue phase
existed, under 2% with it).

The ends. Before cargo's timer started (spawn, resolution, the build lock) and
after the last unit ended (cargo's report, its exit) is cargo's `overhead`,
less what rbd saw it wait for a lock; the first unit's `Running` line on
cargo's output places cargo's clock in rbd's (see offset_s). What is left,
`other`, is cargo's bookkeeping between units and its 10 ms rounding. The
parts add up to the wall time; nothing is estimated: a part rbd cannot
measure is null.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from rbd.contract.schema import Explain, UnitShare
from rbd.daemon.build.records import BuildResult, UnitRecord
from rbd.daemon.build.report import Report, TimingsFormatError, UnitTiming, parse
from rbd.daemon.build.shim import LinkRecord

log = structlog.get_logger("timings")

# cargo's clock ticks in 10 ms: a unit ending within half a tick of its handoff
# handed over its end, not its metadata.
TICK_S = 0.005
TOP = 5


@dataclass(frozen=True)
class FailedUnit:
    """A unit cargo ran that failed (no artifact, not in the report), in rbd's clock."""

    package: str
    target: str
    kind: str
    start_s: float
    end_s: float


@dataclass
class Observed:
    """What rbd saw of a cargo run itself, beside cargo's report."""

    wall_s: float
    # Wall clock (ns) at cargo's spawn; 0: unknown.
    spawned_wall_ns: int = 0
    # Seconds from cargo's spawn to the first unit starting (on cargo's output).
    first_unit_s: float | None = None
    lock_wait_s: float = 0.0
    # Why cargo rebuilt each package (its -v "Dirty" lines).
    dirty: dict[str, str] = field(default_factory=dict)
    # The linker runs the shim recorded; None when it was not in place.
    links: list[LinkRecord] | None = None
    failed: list[FailedUnit] = field(default_factory=list)
    # (package, target name) -> the kind cargo's artifact gave (the report says "lib"
    # for a proc-macro).
    artifact_kinds: dict[tuple[str, str], str] = field(default_factory=dict)


@dataclass
class Segment:
    unit: UnitTiming
    start: float
    end: float


@dataclass
class CriticalPath:
    segments: list[Segment]
    queue_s: float
    # Gaps where cargo ran nothing: before the build's first unit, and after it.
    idle_before_s: float
    idle_after_s: float
    end: float


class Activity:
    """Which units ran when (cargo's clock): how many at once, and the union of them."""

    def __init__(self, units: list[UnitTiming]) -> None:
        events: list[tuple[float, int]] = []
        for unit in units:
            if unit.end > unit.start:
                events += [(unit.start, 1), (unit.end, -1)]
        events.sort()
        # (from, to, how many ran) steps, between one start or end and the next.
        self.steps: list[tuple[float, float, int]] = []
        running = 0
        for i, (t, delta) in enumerate(events[:-1]):
            running += delta
            following = events[i + 1][0]
            if following > t:
                self.steps.append((t, following, running))

    def covered(self, start: float, end: float, at_least: int = 1) -> float:
        """Seconds within [start, end] when at least `at_least` units ran."""
        total = 0.0
        for lo, hi, running in self.steps:
            if running >= at_least and hi > start and lo < end:
                total += min(hi, end) - max(lo, start)
        return total

    def slot_seconds(self, jobs: int) -> float:
        """Seconds of job slots in use (units running, at most `jobs` at once)."""
        return sum((hi - lo) * min(running, jobs) for lo, hi, running in self.steps)


def attach_links(units: list[UnitTiming], links: list[LinkRecord]) -> int:
    """Add each linker run to the unit it linked; returns how many found no unit.

    The shim names a link by package, version, crate name and what rustc
    built (bin, test, proc-macro...). A package's lib and its test harness
    share the crate name, so the kind decides between them.
    """
    unmatched = 0
    for link in links:
        candidates = [
            u
            for u in units
            if u.ran
            and not u.is_script_run
            and u.package == link.package
            and (not link.version or u.version in ("", link.version))
            and u.target.replace("-", "_") == link.crate
        ]
        same_kind = [u for u in candidates if _report_kind(u.kind) == _report_kind(link.kind)]
        chosen = (same_kind or candidates)[:1]
        if not chosen:
            unmatched += 1
            continue
        chosen[0].link = (chosen[0].link or 0.0) + link.seconds
    return unmatched


def _report_kind(kind: str) -> str:
    # cargo's report lists proc-macros and dylibs as libraries.
    return "lib" if kind in ("proc-macro", "dylib", "cdylib", "rlib", "staticlib") else kind


def ready_edges(units: list[UnitTiming]) -> dict[int, tuple[UnitTiming, float]]:
    """For each unit, the unit whose end (or metadata) made it ready last, and when.

    A failed unit is not in cargo's report, so nothing names its index: its edge is
    the latest unblocking of an index the report does not hold, before it started.
    """
    ran = [u for u in units if u.ran and not u.failed]
    known = {u.index for u in units if not u.failed}
    edges: dict[int, tuple[UnitTiming, float]] = {}
    unknown: list[tuple[float, UnitTiming]] = []

    def add(dependent: int, unit: UnitTiming, at: float) -> None:
        if dependent not in known:
            unknown.append((at, unit))
        elif dependent not in edges or at > edges[dependent][1]:
            edges[dependent] = (unit, at)

    for unit in ran:
        for dependent in unit.unblocks:
            add(dependent, unit, unit.end)
        metadata = unit.start + (unit.rmeta if unit.rmeta is not None else unit.duration)
        for dependent in unit.unblocks_rmeta:
            add(dependent, unit, metadata)
    for failed in (u for u in units if u.failed):
        before = [c for c in unknown if c[0] <= failed.start + TICK_S]
        if before:
            at, unit = max(before, key=lambda c: c[0])
            edges[failed.index] = (unit, at)
    return edges


def critical_path(units: list[UnitTiming]) -> CriticalPath | None:
    """The chain of units and waits that decided when the build's last unit ended."""
    ran = [u for u in units if u.ran]
    if not ran:
        return None
    activity = Activity(ran)
    edges = ready_edges(units)
    first_start = min(u.start for u in ran)
    last = max(ran, key=lambda u: (u.end, u.start))
    segments: list[Segment] = []
    queue = idle_before = idle_after = 0.0
    seen: set[int] = set()
    unit, handoff = last, last.end
    while True:
        seen.add(unit.index)
        segments.append(Segment(unit, unit.start, max(unit.start, handoff)))
        edge = edges.get(unit.index)
        if edge is not None and edge[0].index in seen:
            edge = None
        ready = 0.0 if edge is None else min(edge[1], unit.start)
        # The wait from ready to start: other units ran (queue) or none did (idle).
        waited = unit.start - ready
        busy = activity.covered(ready, unit.start)
        queue += busy
        before = max(0.0, min(unit.start, first_start) - ready)
        idle_before += min(before, waited - busy)
        idle_after += max(0.0, waited - busy - before)
        if edge is None:
            break
        unit, handoff = edge[0], max(edge[0].start, ready)
    segments.reverse()
    for segment in segments:
        segment.unit.on_path_s = segment.end - segment.start
    return CriticalPath(segments, queue, idle_before, idle_after, last.end)


def unit_queue_s(unit: UnitTiming, ready: float, activity: Activity) -> float:
    return activity.covered(ready, unit.start) if unit.start > ready else 0.0


def _split(segment: Segment) -> tuple[float, float, float | None, float]:
    """(compile, link, frontend, build script) seconds of one segment of the path."""
    unit, length = segment.unit, segment.end - segment.start
    if unit.is_script_run:
        return 0.0, 0.0, 0.0, length
    whole = unit.failed or segment.end >= unit.end - TICK_S
    link = min(length, unit.link or 0.0) if whole else 0.0
    compile_s = length - link
    frontend = None
    if unit.frontend is not None and unit.codegen is not None and unit.rmeta is not None:
        frontend_start = unit.rmeta - unit.frontend
        frontend = max(0.0, min(length, unit.rmeta) - frontend_start)
        frontend = min(frontend, compile_s)
    return compile_s, link, frontend, 0.0


def phases(path: CriticalPath | None, observed: Observed, offset: float) -> dict[str, float | None]:
    """Build phases by the critical-path rule (see the module docstring).

    offset: seconds from cargo's spawn to its timer's start (rbd's clock to cargo's).
    """
    wall, lock = observed.wall_s, observed.lock_wait_s
    links_measured = observed.links is not None
    if path is None:
        return {
            "overhead_s": _round(max(0.0, wall - lock)),
            "queue_s": 0.0,
            "compile_s": 0.0,
            "frontend_s": None,
            "codegen_s": None,
            "link_s": 0.0 if links_measured else None,
            "build_script_s": 0.0,
            "lock_wait_s": _round(lock),
            "other_s": 0.0,
        }
    compile_s = link_s = build_script_s = 0.0
    frontend_s: float | None = 0.0
    for segment in path.segments:
        c, link, front, script = _split(segment)
        compile_s += c
        link_s += link
        build_script_s += script
        if not segment.unit.is_script_run:
            frontend_s = None if front is None or frontend_s is None else frontend_s + front
    codegen_s = None if frontend_s is None else compile_s - frontend_s
    tail = max(0.0, wall - offset - path.end)
    # The lock wait falls before the first unit: inside the offset or the idle start.
    overhead_s = max(0.0, offset + path.idle_before_s + tail - lock)
    measured = overhead_s + lock + path.queue_s + compile_s + build_script_s
    measured += link_s if links_measured else 0.0
    return {
        "overhead_s": _round(overhead_s),
        "queue_s": _round(path.queue_s),
        "compile_s": _round(compile_s),
        "frontend_s": _round(frontend_s),
        "codegen_s": _round(codegen_s),
        "link_s": _round(link_s) if links_measured else None,
        "build_script_s": _round(build_script_s),
        "lock_wait_s": _round(lock),
        # cargo rounds each unit to 10 ms; a remainder below zero is that rounding.
        "other_s": _round(max(0.0, wall - measured)),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def offset_s(report: Report, observed: Observed) -> float:
    """Seconds from cargo's spawn to its timer's start (cargo's clock to rbd's).

    cargo's timer starts with the cargo process, not at the report's `Build start`
    (taken later, once the build is planned: measured 18-21 ms later on a small crate,
    so that units placed by it ended after cargo had exited). The anchor is the first
    unit: rbd sees its `Running` line on cargo's output as cargo spawns it, and the
    report gives its start in cargo's clock (rounded to 10 ms). Without one, `Build
    start` against rbd's spawn, else 0. Either way the units are kept inside the wall
    time: the last cannot end after cargo exited.
    """
    ran = [u for u in report.units if u.ran and not u.failed]
    first = observed.first_unit_s
    if first is not None and ran:
        offset = first - min(u.start for u in ran)
    elif report.start_ns is not None and observed.spawned_wall_ns:
        offset = (report.start_ns - observed.spawned_wall_ns) / 1e9
    else:
        offset = 0.0
    last_end = max((u.end for u in ran), default=0.0)
    return min(max(0.0, offset), max(0.0, observed.wall_s - last_end))


def add_failed(units: list[UnitTiming], failed: list[FailedUnit], offset: float) -> None:
    """The failed units, placed in cargo's clock. cargo 1.95 lists a failed unit at its
    start with no duration: that entry (and its index, which its dependencies name)
    gets the failure and its time; a failed unit the report does not hold is added
    with an index no report unit has."""
    for i, unit in enumerate(failed):
        start = max(0.0, unit.start_s - offset)
        listed = next(
            (
                u
                for u in units
                if not u.failed
                and u.package == unit.package
                and u.target.replace("-", "_") == unit.target.replace("-", "_")
                and _report_kind(u.kind) == _report_kind(unit.kind)
            ),
            None,
        )
        if listed is not None:
            listed.failed = True
            listed.start = listed.start if listed.start > 0 else start
            listed.duration = max(listed.duration, unit.end_s - offset - listed.start)
            continue
        units.append(
            UnitTiming(
                index=-1 - i,
                package=unit.package,
                version="",
                target=unit.target,
                kind=unit.kind,
                start=start,
                duration=max(0.0, unit.end_s - offset - start),
                failed=True,
            )
        )


def dirty_reasons(
    units: list[UnitTiming], edges: dict[int, tuple[UnitTiming, float]], dirty: dict[str, str]
) -> dict[int, str | None]:
    """Each unit's reason to rebuild. cargo says it once per package; it is the reason of
    the package's first unit to run. A later unit that a rebuilt unit with a reason made
    ready (a bin after its lib) rebuilt because that one did, and says so. A unit cargo
    gave no reason for and no such unit made ready (every unit of a first build) has
    none: rbd does not guess one."""
    reasons: dict[int, str | None] = {}
    claimed: set[str] = set()
    for unit in sorted((u for u in units if u.ran), key=lambda u: (u.start, u.index)):
        edge = edges.get(unit.index)
        own = dirty.get(unit.package)
        if own is not None and unit.package not in claimed:
            claimed.add(unit.package)
            reasons[unit.index] = own
        elif edge is not None and reasons.get(edge[0].index) is not None:
            before = edge[0]
            what = "build script run" if before.is_script_run else before.kind
            reasons[unit.index] = f"rebuilt because `{before.package}` ({what}) was"
        else:
            reasons[unit.index] = own
    return reasons


def explain(
    units: list[UnitTiming], report: Report, path: CriticalPath | None, kinds: dict[int, str]
) -> Explain:
    """Where the build's cores went (schema.Explain)."""
    ran = [u for u in units if u.ran]
    activity = Activity(ran)
    span = (max(u.end for u in ran) - min(u.start for u in ran)) if ran else None
    jobs = report.jobs
    busy = saturated = None
    if jobs and span:
        busy = round(activity.slot_seconds(jobs) / (jobs * span), 4)
        saturated = round(
            activity.covered(min(u.start for u in ran), max(u.end for u in ran), jobs), 4
        )

    def share(unit: UnitTiming, seconds: float) -> UnitShare:
        return {
            "name": unit.package,
            "target": unit.target,
            "kind": kinds.get(unit.index, unit.kind),
            "seconds": round(seconds, 4),
        }

    on_path = [] if path is None else [(s.unit, s.end - s.start) for s in path.segments]
    return {
        "jobs": jobs,
        "ncpu": report.ncpu,
        "span_s": None if span is None else round(span, 4),
        "busy": busy,
        "saturated_s": saturated,
        "units_s": round(sum(u.duration for u in ran), 4),
        "proc_macro_s": round(
            sum(u.duration for u in ran if kinds.get(u.index) == "proc-macro"), 4
        ),
        "build_script_s": round(
            sum(u.duration for u in ran if u.kind in ("custom-build", "build-script-run")), 4
        ),
        "top_units": [share(u, u.duration) for u in sorted(ran, key=lambda u: -u.duration)][:TOP],
        "top_path": [share(u, s) for u, s in sorted(on_path, key=lambda p: -p[1])][:TOP],
    }


def _fallback(result: BuildResult, observed: Observed) -> None:
    """Without a readable report: the units rbd saw on cargo's output stay as they are,
    and only what rbd measured itself (overhead, lock wait) is set."""
    for unit in result.units:
        unit.dirty_reason = observed.dirty.get(unit.name)
        crate = unit.target.replace("-", "_")
        linked = [
            x.seconds for x in observed.links or () if (x.package, x.crate) == (unit.name, crate)
        ]
        unit.link_s = round(sum(linked), 4) if linked else None
    for failed in observed.failed:
        result.units.append(
            UnitRecord(
                name=failed.package,
                target=failed.target,
                kind=failed.kind,
                start_s=round(failed.start_s, 4),
                total_s=round(failed.end_s - failed.start_s, 4),
                dirty_reason=observed.dirty.get(failed.package),
                failed=True,
            )
        )
    result.units_rebuilt = len(result.units)
    first = observed.first_unit_s
    overhead = result.wall_s if first is None else first
    result.phases.update(
        overhead_s=round(max(0.0, overhead - observed.lock_wait_s), 4),
        lock_wait_s=round(observed.lock_wait_s, 4),
    )


def apply_report(
    result: BuildResult,
    report_path: Path | None,
    cargo_version: tuple[int, int] | None,
    observed: Observed,
) -> None:
    """Fill result's units, counts, phases and explanation from the report (and remove it)."""
    report: Report | None = None
    if report_path is not None:
        try:
            report = parse(report_path.read_text(errors="replace"), cargo_version)
        except (OSError, TimingsFormatError) as exc:
            log.warning("timings_unreadable", report=str(report_path), error=str(exc))
        # One report per build would pile up in target/cargo-timings; cargo
        # keeps the latest as cargo-timing.html anyway.
        with contextlib.suppress(OSError):
            report_path.unlink()
    if report is None:
        _fallback(result, observed)
        return
    analyse(result, report, observed)


def analyse(result: BuildResult, report: Report, observed: Observed) -> None:
    """Fill result from a parsed report and what rbd observed."""
    units = report.units
    offset = offset_s(report, observed)
    add_failed(units, observed.failed, offset)
    if observed.links is not None and attach_links(units, observed.links):
        log.warning("link_without_unit", links=len(observed.links))
    path = critical_path(units)
    result.phases.update(phases(path, observed, offset))
    edges = ready_edges(units)
    ran = [u for u in units if u.ran]
    activity = Activity(ran)
    kinds = {
        u.index: observed.artifact_kinds.get((u.package, u.target.replace("-", "_")), u.kind)
        if u.kind == "lib"
        else u.kind
        for u in ran
    }
    reasons = dirty_reasons(units, edges, observed.dirty)
    records = []
    for u in sorted(ran, key=lambda u: -u.duration):
        ready = edges[u.index][1] if u.index in edges else 0.0
        records.append(
            UnitRecord(
                name=u.package,
                target=u.target,
                kind=kinds[u.index],
                start_s=round(offset + u.start, 4),
                total_s=round(u.duration, 4),
                compile_s=None
                if u.is_script_run
                else round(max(0.0, u.duration - (u.link or 0.0)), 4),
                frontend_s=u.frontend,
                codegen_s=u.codegen,
                build_script_s=u.duration if u.is_script_run else None,
                link_s=None if u.link is None else round(u.link, 4),
                dirty_reason=reasons.get(u.index),
                critical_path=u.on_path_s is not None,
                ready_s=round(offset + min(ready, u.start), 4),
                queue_s=round(unit_queue_s(u, min(ready, u.start), activity), 4),
                path_s=None if u.on_path_s is None else round(u.on_path_s, 4),
                failed=u.failed,
            )
        )
    result.units = records
    result.units_rebuilt = len(records)
    if report.fresh is not None:
        result.units_fresh = report.fresh
    result.explain = explain(units, report, path, kinds)
