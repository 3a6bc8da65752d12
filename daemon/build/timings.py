"""Where a build's time went, from cargo's `--timings` report and what cargo printed.

cargo (stable) embeds `const UNIT_DATA = [...]` in the HTML report it writes
for `--timings`: per unit its start and duration (seconds since cargo's
timer started, rounded by cargo to 0.01 s) and, for libraries, `sections`
with frontend and codegen spans. Its schema changes between cargo versions,
so the parser is keyed on the version it was checked against; any other
version, or a report that does not parse, degrades to unit totals (with a
logged warning), never to a wrong split.

Per build, the phases follow the critical path: starting from the unit that
finished last, each step goes back to the dependency that unblocked it last.
Along that path compile (frontend + codegen), link and build-script time are
added up. cargo counts a unit's link inside its time; rbd's linker shim
(rbd.daemon.build.shim) measures it, and it is taken out of compile time. Overhead
(spawn to the first unit), lock wait and the remainder `other` (gaps on the
path, cargo's own bookkeeping, rounding) complete the wall time, so the parts
add up to it. Units off the path ran in parallel and cost no
wall time of their own; `rbd show` marks which units are on the path.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from rbd.daemon.build.records import BuildResult, UnitRecord
from rbd.daemon.build.shim import LinkRecord

log = structlog.get_logger("timings")

# cargo versions whose UNIT_DATA schema was checked against real reports
# (tests/data holds them): `sections` as [[name, {start, end}], ...] relative
# to the unit's start, fresh units listed with start and duration 0. Add a
# version here only with a report of it in tests/data.
CHECKED_VERSIONS = frozenset({(1, 95)})

# ' app "bin"', ' t "lib" (test)', ' it "test" (test)': name, kind, and a
# mode when the unit is a test harness built from the target.
TARGET = re.compile(r'^\s*(?:(?P<name>\S+)\s+)?"(?P<kind>[\w-]+)"(?:\s+\((?P<mode>[\w ]+)\))?\s*$')


class TimingsFormatError(ValueError):
    pass


@dataclass
class UnitTiming:
    index: int
    package: str
    version: str
    target: str
    kind: str
    start: float
    duration: float
    frontend: float | None = None
    codegen: float | None = None
    unblocks: tuple[int, ...] = ()
    unblocks_rmeta: tuple[int, ...] = ()
    on_critical_path: bool = False
    # Seconds in the linker (inside duration), from rbd's linker shim.
    link: float | None = None

    @property
    def ran(self) -> bool:
        # Fresh units are listed too, at 0 with no duration; any rustc or
        # build-script run takes at least one of cargo's 10 ms ticks.
        return self.start > 0 or self.duration > 0

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def is_script_run(self) -> bool:
        return self.kind == "build-script-run"


def _target(package: str, text: str) -> tuple[str, str]:
    """(target name, kind) from UNIT_DATA's target text: '', ' app "bin"', ' build-script'..."""
    text = text.strip()
    if not text:
        return package.replace("-", "_"), "lib"
    if text == "build-script":
        return "build-script-build", "custom-build"
    if text == "build-script (run)":
        return "build-script-build", "build-script-run"
    match = TARGET.match(text)
    if match:
        kind = {"test": "test", "doc test": "doctest"}.get(match["mode"] or "", match["kind"])
        return match["name"] or package.replace("-", "_"), kind
    return text, "unknown"


def extract_unit_data(html: str) -> list[dict[str, Any]]:
    marker = "const UNIT_DATA = "
    at = html.find(marker)
    if at < 0:
        raise TimingsFormatError("no UNIT_DATA in the timings report")
    try:
        data, _ = json.JSONDecoder().raw_decode(html, at + len(marker))
    except ValueError as exc:
        raise TimingsFormatError(f"UNIT_DATA is not JSON: {exc}") from None
    if not isinstance(data, list):
        raise TimingsFormatError("UNIT_DATA is not a list")
    return data


def parse_report(html: str, cargo_version: tuple[int, int] | None) -> list[UnitTiming]:
    """The units of a report; the frontend/codegen split only for a known schema."""
    data = extract_unit_data(html)
    known = cargo_version in CHECKED_VERSIONS
    if not known:
        log.warning(
            "timings_schema_unknown",
            cargo=".".join(map(str, cargo_version or ())) or None,
            fallback="unit totals without frontend/codegen split",
        )
    units = []
    try:
        for raw in data:
            package = str(raw["name"])
            target, kind = _target(package, str(raw.get("target", "")))
            unit = UnitTiming(
                index=int(raw["i"]),
                package=package,
                version=str(raw.get("version", "")),
                target=target,
                kind=kind,
                start=float(raw["start"]),
                duration=float(raw["duration"]),
                unblocks=tuple(int(i) for i in raw.get("unblocked_units") or ()),
                unblocks_rmeta=tuple(int(i) for i in raw.get("unblocked_rmeta_units") or ()),
            )
            if known:
                unit.frontend, unit.codegen = _sections(raw.get("sections"))
            units.append(unit)
    except (KeyError, TypeError, ValueError) as exc:
        raise TimingsFormatError(f"unexpected unit in UNIT_DATA: {exc}") from None
    return units


def _sections(sections: Any) -> tuple[float | None, float | None]:
    if not isinstance(sections, list):
        return None, None
    spans = {}
    for entry in sections:
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict):
            spans[entry[0]] = float(entry[1]["end"]) - float(entry[1]["start"])
    return spans.get("frontend"), spans.get("codegen")


def critical_path(units: list[UnitTiming]) -> list[UnitTiming]:
    """The chain of units that decided when the build ended, first unit first."""
    ran = {unit.index: unit for unit in units if unit.ran}
    if not ran:
        return []
    unblocked_by: dict[int, list[tuple[UnitTiming, float]]] = {}
    for unit in ran.values():
        rmeta_end = unit.start + unit.frontend if unit.frontend is not None else unit.end
        for dependent in unit.unblocks:
            unblocked_by.setdefault(dependent, []).append((unit, unit.end))
        for dependent in unit.unblocks_rmeta:
            unblocked_by.setdefault(dependent, []).append((unit, rmeta_end))
    path = [max(ran.values(), key=lambda u: (u.end, u.start))]
    seen = {path[0].index}
    while candidates := [c for c in unblocked_by.get(path[-1].index, []) if c[0].index not in seen]:
        previous = max(candidates, key=lambda c: c[1])[0]
        path.append(previous)
        seen.add(previous.index)
    path.reverse()
    for unit in path:
        unit.on_critical_path = True
    return path


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
        same_kind = [u for u in candidates if u.kind == _unit_kind(link.kind)]
        chosen = (same_kind or candidates)[:1]
        if not chosen:
            unmatched += 1
            continue
        chosen[0].link = (chosen[0].link or 0.0) + link.seconds
    return unmatched


def _unit_kind(link_kind: str) -> str:
    # cargo's report lists proc-macros and dylibs as libraries.
    return "lib" if link_kind in ("proc-macro", "dylib", "cdylib") else link_kind


def _compile_time(unit: UnitTiming) -> float:
    return max(0.0, unit.duration - (unit.link or 0.0))


def phases(
    units: list[UnitTiming],
    wall_s: float,
    first_unit_s: float | None,
    lock_wait_s: float,
    links_measured: bool,
) -> dict[str, float | None]:
    """Build phases by the critical-path rule (see the module docstring).

    first_unit_s: seconds from cargo's spawn to the first unit starting, as
    rbd saw it on cargo's output; None when no unit ran. links_measured:
    whether the linker shim was in place, so that units without a link
    record ran no linker.
    """
    path = critical_path(units)
    compile_units = [u for u in path if not u.is_script_run]
    compile_s = sum(_compile_time(u) for u in compile_units)
    link_s = sum(u.link or 0.0 for u in compile_units) if links_measured else None
    split = all(u.frontend is not None and u.codegen is not None for u in compile_units)
    frontend_s = sum(u.frontend or 0.0 for u in compile_units) if split else None
    codegen_s = sum(u.codegen or 0.0 for u in compile_units) if split else None
    build_script_s = sum(u.duration for u in path if u.is_script_run)
    if first_unit_s is None or not path:
        overhead_s = max(0.0, wall_s - lock_wait_s)
    else:
        overhead_s = max(0.0, first_unit_s - lock_wait_s)
    measured = overhead_s + lock_wait_s + compile_s + (link_s or 0.0) + build_script_s

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return {
        "overhead_s": rounded(overhead_s),
        "compile_s": rounded(compile_s),
        "frontend_s": rounded(frontend_s),
        "codegen_s": rounded(codegen_s),
        "link_s": rounded(link_s),
        "build_script_s": rounded(build_script_s),
        "lock_wait_s": rounded(lock_wait_s),
        # cargo rounds each unit to 10 ms; a remainder below zero is that rounding.
        "other_s": rounded(max(0.0, wall_s - measured)),
    }


def cargo_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `cargo --version` output."""
    match = re.search(r"cargo (\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def apply_report(
    result: BuildResult,
    report: Path | None,
    cargo_version: tuple[int, int] | None,
    dirty: dict[str, str],
    first_unit_s: float | None,
    lock_wait_s: float,
    links: list[LinkRecord] | None = None,
) -> None:
    """Fill result's units and phases from the report (and remove the report).

    links: the linker runs the shim recorded, None when it was not in place.
    Without a readable report, the units rbd saw on cargo's output stay as
    they are and only what rbd measured itself (overhead, lock wait) is set.
    """
    units: list[UnitTiming] | None = None
    if report is not None:
        try:
            units = parse_report(report.read_text(errors="replace"), cargo_version)
        except (OSError, TimingsFormatError) as exc:
            log.warning("timings_unreadable", report=str(report), error=str(exc))
        # One report per build would pile up in target/cargo-timings; cargo
        # keeps the latest as cargo-timing.html anyway.
        with contextlib.suppress(OSError):
            report.unlink()
    if units is None:
        for unit in result.units:
            unit.dirty_reason = dirty.get(unit.name)
            crate = unit.target.replace("-", "_")
            linked = [x.seconds for x in links or () if (x.package, x.crate) == (unit.name, crate)]
            unit.link_s = round(sum(linked), 4) if linked else None
        overhead = result.wall_s if first_unit_s is None else first_unit_s
        result.phases.update(
            overhead_s=round(max(0.0, overhead - lock_wait_s), 4),
            lock_wait_s=round(lock_wait_s, 4),
        )
        return
    if links is not None and attach_links(units, links):
        log.warning("link_without_unit", links=len(links))
    result.phases.update(
        phases(units, result.wall_s, first_unit_s, lock_wait_s, links_measured=links is not None)
    )
    result.units = [
        UnitRecord(
            name=u.package,
            target=u.target,
            kind=u.kind,
            start_s=u.start,
            total_s=u.duration,
            compile_s=None if u.is_script_run else round(_compile_time(u), 4),
            frontend_s=u.frontend,
            codegen_s=u.codegen,
            build_script_s=u.duration if u.is_script_run else None,
            link_s=None if u.link is None else round(u.link, 4),
            dirty_reason=dirty.get(u.package),
            critical_path=u.on_critical_path,
        )
        for u in sorted((u for u in units if u.ran), key=lambda u: -u.duration)
    ]
