"""Reading cargo's `--timings` report: its units, and what its summary table says.

cargo (stable) embeds `const UNIT_DATA = [...]` in the HTML report it writes
for `--timings`: per unit its start and duration (seconds since cargo's
timer started, rounded by cargo to 0.01 s), the units it made ready when it
finished (`unblocked_units`) or when its metadata was ready
(`unblocked_rmeta_units`, pipelining) and, for libraries, `sections` with
frontend and codegen spans. Its schema changes between cargo versions, so the
split is read only for versions it was checked against; any other version,
or a report that does not parse, degrades to unit totals (with a logged
warning), never to a wrong split.

The summary table gives `Build start` (wall clock, to the nanosecond, taken once
the build is planned: later than cargo's timer starts; see timings.offset_s),
what the build's cores were (`jobs=N ncpu=M`), and cargo's fresh/dirty counts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

log = structlog.get_logger("report")

# cargo versions whose UNIT_DATA schema was checked against real reports
# (tests/data holds them): `sections` as [[name, {start, end}], ...] relative
# to the unit's start, fresh units listed with start and duration 0. Add a
# version here only with a report of it in tests/data.
CHECKED_VERSIONS = frozenset({(1, 95)})

# ' app "bin"', ' t "lib" (test)', ' it "test" (test)': name, kind, and a
# mode when the unit is a test harness built from the target.
TARGET = re.compile(r'^\s*(?:(?P<name>\S+)\s+)?"(?P<kind>[\w-]+)"(?:\s+\((?P<mode>[\w ]+)\))?\s*$')
ROW = re.compile(r"<tr>\s*<td>([^<]*):</td>\s*<td>(.*?)</td>\s*</tr>", re.S)
JOBS = re.compile(r"jobs=(\d+)\s+ncpu=(\d+)")


class TimingsFormatError(ValueError):
    pass


@dataclass
class UnitTiming:
    """One unit of the report, in cargo's clock (seconds since its timer started)."""

    index: int
    package: str
    version: str
    target: str
    kind: str
    start: float
    duration: float
    frontend: float | None = None
    codegen: float | None = None
    # Seconds from the unit's start to its metadata (the end of its frontend span).
    rmeta: float | None = None
    unblocks: tuple[int, ...] = ()
    unblocks_rmeta: tuple[int, ...] = ()
    # Seconds in the linker (inside duration), from rbd's linker shim.
    link: float | None = None
    # cargo ran it and it failed: not in the report, timed from cargo's output.
    failed: bool = False
    # Its seconds on the critical path; None: off it (set by timings.critical_path).
    on_path_s: float | None = None

    @property
    def ran(self) -> bool:
        # Fresh units are listed too, at 0 with no duration; any rustc or
        # build-script run takes at least one of cargo's 10 ms ticks.
        return self.start > 0 or self.duration > 0 or self.failed

    @property
    def end(self) -> float:
        return self.start + self.duration

    @property
    def is_script_run(self) -> bool:
        return self.kind == "build-script-run"


@dataclass
class Report:
    units: list[UnitTiming]
    # The wall clock (ns since the epoch) at cargo's timer start; None if not given.
    start_ns: int | None = None
    jobs: int | None = None
    ncpu: int | None = None
    fresh: int | None = None
    dirty: int | None = None
    rows: dict[str, str] = field(default_factory=dict)


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


def parse_units(html: str, cargo_version: tuple[int, int] | None) -> list[UnitTiming]:
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
                unit.frontend, unit.codegen, unit.rmeta = _sections(raw.get("sections"))
            units.append(unit)
    except (KeyError, TypeError, ValueError) as exc:
        raise TimingsFormatError(f"unexpected unit in UNIT_DATA: {exc}") from None
    return units


def _sections(sections: Any) -> tuple[float | None, float | None, float | None]:
    if not isinstance(sections, list):
        return None, None, None
    spans: dict[str, tuple[float, float]] = {}
    for entry in sections:
        if isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], dict):
            spans[str(entry[0])] = (float(entry[1]["start"]), float(entry[1]["end"]))
    frontend, codegen = spans.get("frontend"), spans.get("codegen")
    return (
        None if frontend is None else frontend[1] - frontend[0],
        None if codegen is None else codegen[1] - codegen[0],
        None if frontend is None else frontend[1],
    )


def parse(html: str, cargo_version: tuple[int, int] | None) -> Report:
    """The whole report. Raises TimingsFormatError when its units cannot be read; a
    summary row it cannot read is left unknown."""
    report = Report(parse_units(html, cargo_version))
    report.rows = {name.strip(): value for name, value in ROW.findall(html)}
    report.start_ns = _timestamp_ns(report.rows.get("Build start", ""))
    if match := JOBS.search(report.rows.get("Max concurrency", "")):
        report.jobs, report.ncpu = int(match[1]), int(match[2])
    report.fresh = _count(report.rows.get("Fresh units"))
    report.dirty = _count(report.rows.get("Dirty units"))
    return report


def _count(text: str | None) -> int | None:
    return int(text) if text is not None and text.strip().isdigit() else None


def _timestamp_ns(text: str) -> int | None:
    """ns since the epoch of `2026-11-22T00:04:47.79237062Z` (Python's parser takes µs)."""
    match = re.fullmatch(r"\s*(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z\s*", text)
    if not match:
        return None
    try:
        whole = datetime.fromisoformat(match[1] + "+00:00")
    except ValueError:
        return None
    fraction = (match[2] or "").ljust(9, "0")
    return int(whole.timestamp()) * 1_000_000_000 + int(fraction)


def cargo_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `cargo --version` output."""
    match = re.search(r"cargo (\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None
