"""cargo's --timings report: the parser (on reports of the installed cargo) and the phase rule."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from rbd.daemon.build import kinds, timings
from rbd.daemon.build import report as cargo_report
from rbd.daemon.build.records import BuildResult, UnitRecord
from rbd.daemon.build.report import UnitTiming
from rbd.daemon.build.shim import LinkRecord
from tests.conftest import make_crate

DATA = Path(__file__).parent / "data"
V195 = (1, 95)
PARTS = (
    "overhead_s",
    "queue_s",
    "lock_wait_s",
    "compile_s",
    "link_s",
    "build_script_s",
    "other_s",
)


def report(name: str) -> str:
    return (DATA / name).read_text()


def units_of(name: str) -> list[UnitTiming]:
    return cargo_report.parse_units(report(name), V195)


def phases_of(
    units: list[UnitTiming], wall: float, offset: float, links: bool = False, lock: float = 0.0
) -> dict[str, float | None]:
    observed = timings.Observed(wall_s=wall, lock_wait_s=lock, links=[] if links else None)
    return timings.phases(timings.critical_path(units), observed, offset)


def total(phases: dict[str, float | None]) -> float:
    return sum(phases[p] or 0.0 for p in PARTS)


def test_workspace_report_units_and_split() -> None:
    units = {(u.package, u.kind): u for u in units_of("cargo-1.95-timing-workspace.html")}
    assert set(units) == {
        ("core", "custom-build"),
        ("core", "build-script-run"),
        ("core", "lib"),
        ("app", "bin"),
    }
    run = units[("core", "build-script-run")]
    assert run.duration == pytest.approx(0.3) and run.is_script_run
    lib = units[("core", "lib")]
    assert lib.frontend == pytest.approx(0.01) and lib.codegen == pytest.approx(0.01)
    assert units[("app", "bin")].target == "app"
    assert units[("app", "bin")].frontend is None  # cargo gives binaries no split


def test_critical_path_and_phases_add_up_to_wall() -> None:
    units = units_of("cargo-1.95-timing-workspace.html")
    path = timings.critical_path(units)
    assert path is not None
    assert [(s.unit.package, s.unit.kind) for s in path.segments] == [
        ("core", "custom-build"),
        ("core", "build-script-run"),
        ("core", "lib"),
        ("app", "bin"),
    ]
    phases = phases_of(units, wall=0.62, offset=0.01)
    assert phases["build_script_s"] == pytest.approx(0.3)
    assert phases["compile_s"] == pytest.approx(0.06 + 0.02 + 0.07)
    assert phases["frontend_s"] is None  # the bin on the path has no split
    assert phases["link_s"] is None
    # Before cargo's first unit (0.04 s in its clock) and its timer (0.01 s): overhead.
    assert phases["overhead_s"] == pytest.approx(0.01 + 0.04 + (0.62 - 0.01 - 0.5))
    assert total(phases) == pytest.approx(0.62)


def test_fresh_units_are_not_timed() -> None:
    html = report("cargo-1.95-timing-lib-bins.html")
    ran = [u for u in cargo_report.parse_units(html, V195) if u.ran]
    assert {(u.target, u.kind) for u in ran} == {("p", "lib"), ("other", "bin"), ("p", "bin")}


def test_unknown_cargo_version_degrades_to_totals_with_a_warning() -> None:
    with capture_logs() as logs:
        units = cargo_report.parse_units(report("cargo-1.95-timing-workspace.html"), (1, 80))
    assert all(u.frontend is None and u.codegen is None for u in units)
    assert [u.duration for u in units if u.is_script_run] == [pytest.approx(0.3)]
    assert logs[0]["event"] == "timings_schema_unknown"


@pytest.mark.parametrize(
    "html", ["<html></html>", "const UNIT_DATA = {not json", 'const UNIT_DATA = [{"i": 0}];']
)
def test_broken_reports_raise_a_format_error(html: str) -> None:
    with pytest.raises(cargo_report.TimingsFormatError):
        cargo_report.parse(html, V195)


def test_unreadable_report_leaves_units_and_logs(tmp_path: Path) -> None:
    bad = tmp_path / "cargo-timing-x.html"
    bad.write_text("<html>no data</html>")
    result = BuildResult(outcome="success", wall_s=1.0)
    with capture_logs() as logs:
        observed = timings.Observed(wall_s=1.0, first_unit_s=0.2, lock_wait_s=0.1)
        timings.apply_report(result, bad, V195, observed)
    assert logs[0]["event"] == "timings_unreadable"
    assert result.phases["overhead_s"] == pytest.approx(0.1)
    assert result.phases["compile_s"] is None
    assert not bad.exists()


def test_report_of_the_installed_cargo(tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "lib", "lib_and_bin", {"src/lib.rs": "pub fn f() -> u8 { 1 }\n"})
    version = cargo_report.cargo_version(
        subprocess.run(["cargo", "--version"], capture_output=True, text=True, check=True).stdout
    )
    done = subprocess.run(
        ["cargo", "build", "--timings"], cwd=crate, capture_output=True, text=True, check=True
    )
    saved = [line for line in done.stderr.splitlines() if "Timing report saved to" in line]
    path = Path(saved[0].split("saved to", 1)[1].strip())
    parsed = cargo_report.parse(path.read_text(), version)
    units = parsed.units
    lib = next(u for u in units if u.kind == "lib")
    assert version in cargo_report.CHECKED_VERSIONS, f"cargo {version}: check its report format"
    assert parsed.jobs is not None and parsed.ncpu is not None and parsed.start_ns is not None
    assert parsed.fresh == 0 and parsed.dirty == len([u for u in units if u.ran])
    assert lib.frontend is not None and lib.codegen is not None
    assert lib.frontend + lib.codegen == pytest.approx(lib.duration, abs=0.02)
    assert {u.kind for u in units if u.ran} == {"lib", "bin"}


def link(package: str, crate: str, kind: str, seconds: float) -> LinkRecord:
    start = 1_000_000_000_000
    return LinkRecord(package, "0.1.0", crate, kind, start, start + int(seconds * 1e9), 0, "cc")


def test_link_time_moves_out_of_compile_time_and_parts_still_add_up() -> None:
    units = units_of("cargo-1.95-timing-workspace.html")
    links = [
        link("app", "app", "bin", 0.05),
        link("core", "build_script_build", "custom-build", 0.02),
    ]
    assert timings.attach_links(units, links) == 0
    phases = phases_of(units, wall=0.62, offset=0.01, links=True)
    assert phases["link_s"] == pytest.approx(0.07)
    assert phases["compile_s"] == pytest.approx(0.06 + 0.02 + 0.07 - 0.07)
    assert total(phases) == pytest.approx(0.62)


def test_link_measured_but_nothing_linked_on_the_path_is_zero_not_unknown() -> None:
    units = units_of("cargo-1.95-timing-workspace.html")
    phases = phases_of(units, wall=0.62, offset=0.01, links=True)
    assert phases["link_s"] == 0.0


def test_a_link_goes_to_the_unit_of_its_kind_when_targets_share_a_crate_name() -> None:
    rows = [("", 0.1, 0.2), (' t "lib" (test)', 0.1, 0.3)]
    rows += [(' tool "bin" (test)', 0.3, 0.3), (' tool "bin"', 0.3, 0.2)]
    data = [
        {"i": i, "name": "t", "version": "0.1.0", "target": text, "start": start, "duration": d}
        for i, (text, start, d) in enumerate(rows)
    ]
    html = "<script>const UNIT_DATA = " + json.dumps(data) + ";</script>"
    units = cargo_report.parse_units(html, V195)
    found = [(u.target, u.kind) for u in units]
    assert found == [("t", "lib"), ("t", "test"), ("tool", "test"), ("tool", "bin")]
    unmatched = timings.attach_links(
        units,
        [link("t", "t", "test", 0.1), link("t", "tool", "bin", 0.05), link("x", "x", "bin", 1.0)],
    )
    assert unmatched == 1
    assert [u.link for u in units] == [None, pytest.approx(0.1), None, pytest.approx(0.05)]


def unit(
    i: int,
    name: str,
    start: float,
    duration: float,
    unblocks: tuple[int, ...] = (),
    rmeta: tuple[int, ...] = (),
    target: str = "",
    frontend: float | None = None,
) -> dict[str, Any]:
    """A UNIT_DATA entry; with `frontend`, a lib's sections (codegen after it)."""
    sections = None
    if frontend is not None:
        sections = [
            ["frontend", {"start": 0.0, "end": frontend}],
            ["codegen", {"start": frontend, "end": duration}],
        ]
    return {
        "i": i,
        "name": name,
        "version": "1.0.0",
        "target": target,
        "start": start,
        "duration": duration,
        "unblocked_units": list(unblocks),
        "unblocked_rmeta_units": list(rmeta),
        "sections": sections,
    }


def page(data: list[dict[str, Any]], jobs: int = 2, start: str = "", fresh: int = 0) -> str:
    rows = f"<tr>\n<td>Fresh units:</td><td>{fresh}</td>\n</tr>\n"
    rows += f"<tr>\n<td>Max concurrency:</td><td>2 (jobs={jobs} ncpu={jobs})</td>\n</tr>\n"
    if start:
        rows += f"<tr>\n<td>Build start:</td><td>{start}</td>\n</tr>\n"
    return f"<table>{rows}</table><script>const UNIT_DATA = {json.dumps(data)};</script>"


def test_a_ready_unit_waiting_for_a_core_is_queue_not_other() -> None:
    # 2 slots. `date` has no dependencies: ready at once, it got a core only at 6 s,
    # when `tokio` ended; `hyper` waits for it. The old walk stopped at `date`.
    data = [
        unit(0, "tokio", 0.0, 6.0),
        unit(1, "syn", 0.0, 5.0, unblocks=(2,)),
        unit(2, "serde", 5.0, 3.0),
        unit(3, "date", 6.0, 1.0, unblocks=(4,)),
        unit(4, "hyper", 7.0, 2.0),
    ]
    units = cargo_report.parse_units(page(data), V195)
    phases = phases_of(units, wall=9.5, offset=0.2)
    assert phases["queue_s"] == pytest.approx(6.0)
    assert phases["compile_s"] == pytest.approx(3.0)
    assert phases["other_s"] == pytest.approx(0.0)
    assert phases["overhead_s"] == pytest.approx(0.2 + 0.3)
    assert total(phases) == pytest.approx(9.5)


def test_a_pipelined_edge_counts_the_metadata_part_and_the_wait_for_a_slot() -> None:
    # `a` gives its metadata at 4 s; `b` is ready then but both slots are taken
    # (`a`'s codegen, `c`) until 8 s.
    data = [
        unit(0, "a", 0.0, 10.0, rmeta=(2,), frontend=4.0),
        unit(1, "c", 0.0, 8.0),
        unit(2, "b", 8.0, 4.0, frontend=1.0),
    ]
    units = cargo_report.parse_units(page(data), V195)
    path = timings.critical_path(units)
    assert path is not None
    assert [(s.unit.package, s.end - s.start) for s in path.segments] == [("a", 4.0), ("b", 4.0)]
    phases = phases_of(units, wall=12.0, offset=0.0)
    assert phases["queue_s"] == pytest.approx(4.0)
    assert phases["compile_s"] == pytest.approx(8.0)
    # a's frontend (4) and b's (1); codegen only b's 3: a's ran beside the path.
    assert phases["frontend_s"] == pytest.approx(5.0)
    assert phases["codegen_s"] == pytest.approx(3.0)
    assert total(phases) == pytest.approx(12.0)


def test_a_gap_where_cargo_ran_nothing_is_other_and_before_the_first_unit_overhead() -> None:
    data = [unit(0, "a", 0.5, 1.0, unblocks=(1,)), unit(1, "b", 2.0, 1.0)]
    units = cargo_report.parse_units(page(data), V195)
    phases = phases_of(units, wall=3.5, offset=0.1)
    assert phases["queue_s"] == 0.0
    assert phases["other_s"] == pytest.approx(0.5)
    assert phases["overhead_s"] == pytest.approx(0.1 + 0.5 + 0.4)
    assert total(phases) == pytest.approx(3.5)


def analysed(
    html: str, observed: timings.Observed, fresh_units: list[UnitRecord] | None = None
) -> BuildResult:
    result = BuildResult(outcome="success", wall_s=observed.wall_s)
    result.units = fresh_units or []
    timings.analyse(result, cargo_report.parse(html, V195), observed)
    return result


def test_units_get_ready_times_queue_waits_and_path_shares_in_rbds_clock() -> None:
    data = [
        unit(0, "tokio", 0.0, 6.0),
        unit(1, "syn", 0.0, 5.0, unblocks=(2,)),
        unit(2, "serde", 5.0, 3.0),
        unit(3, "date", 6.0, 1.0, unblocks=(4,)),
        unit(4, "hyper", 7.0, 2.0),
    ]
    spawned = 1_700_000_000_000_000_000
    html = page(data, start="2023-11-14T22:13:20.25Z", fresh=3)
    result = analysed(html, timings.Observed(wall_s=9.5, spawned_wall_ns=spawned))
    by_name = {u.name: u for u in result.units}
    assert by_name["date"].start_s == pytest.approx(6.25)
    assert by_name["date"].ready_s == pytest.approx(0.25)
    assert by_name["date"].queue_s == pytest.approx(6.0)
    assert by_name["hyper"].ready_s == pytest.approx(7.25) and by_name["hyper"].queue_s == 0.0
    assert [u.name for u in result.units if u.critical_path] == ["hyper", "date"]
    assert by_name["tokio"].path_s is None and by_name["hyper"].path_s == pytest.approx(2.0)
    assert result.units_rebuilt == 5 and result.units_fresh == 3
    assert result.phases["overhead_s"] == pytest.approx(0.25 + 0.25)
    explain = result.explain
    assert explain is not None
    assert explain["jobs"] == 2 and explain["span_s"] == pytest.approx(9.0)
    assert explain["units_s"] == pytest.approx(17.0)
    # Slots in use: 2 until 8 s, then 1 (hyper): 17 of 18 slot-seconds.
    assert explain["busy"] == pytest.approx(17 / 18, abs=1e-3)
    assert explain["saturated_s"] == pytest.approx(8.0)
    assert [s["name"] for s in explain["top_units"]][:2] == ["tokio", "syn"]
    assert explain["top_path"][0]["name"] == "hyper"


def test_a_failed_unit_is_timed_counted_and_ends_the_path() -> None:
    # A failed unit the report does not hold (cargo 1.95 lists it with no duration; see
    # tests/test_builder.py for that case on real cargo): `app` failed after 0.6 s.
    data = [unit(0, "dep", 0.0, 0.3, unblocks=(1,))]
    observed = timings.Observed(
        wall_s=1.0,
        first_unit_s=0.05,
        failed=[timings.FailedUnit("app", "app", "lib", start_s=0.36, end_s=0.96)],
    )
    result = analysed(page(data, fresh=4), observed)
    result.outcome = "failure"
    failed = [u for u in result.units if u.failed]
    assert [u.name for u in failed] == ["app"]
    assert failed[0].total_s == pytest.approx(0.6)
    assert failed[0].critical_path
    assert result.units_rebuilt == 2
    assert result.phases["compile_s"] == pytest.approx(0.9)
    assert total(result.phases) == pytest.approx(1.0)


def test_a_bin_after_its_lib_says_it_rebuilt_because_the_lib_did() -> None:
    data = [
        unit(0, "p", 0.0, 1.0, unblocks=(1,)),
        unit(1, "p", 1.0, 0.5, target=' p "bin"'),
    ]
    observed = timings.Observed(wall_s=2.0, dirty={"p": "the file `src/lib.rs` has changed"})
    result = analysed(page(data, fresh=1), observed)
    reasons = {u.kind: u.dirty_reason for u in result.units}
    assert reasons == {
        "lib": "the file `src/lib.rs` has changed",
        "bin": "rebuilt because `p` (lib) was",
    }


def test_proc_macros_are_named_so_from_cargos_artifacts() -> None:
    data = [unit(0, "serde-derive", 0.0, 2.0, unblocks=(1,)), unit(1, "app", 2.0, 1.0)]
    observed = timings.Observed(
        wall_s=3.0, artifact_kinds={("serde-derive", "serde_derive"): "proc-macro"}
    )
    result = analysed(page(data, fresh=0), observed)
    assert {u.name: u.kind for u in result.units}["serde-derive"] == "proc-macro"
    assert result.explain is not None and result.explain["proc_macro_s"] == pytest.approx(2.0)


def test_build_start_parses_to_the_nanosecond() -> None:
    html = page([unit(0, "a", 0.0, 1.0)], start="2026-11-22T00:04:47.79237062Z")
    parsed = cargo_report.parse(html, V195)
    assert parsed.start_ns == 1795305887_792370620
    assert parsed.jobs == 2 and parsed.fresh == 0


def record(name: str) -> UnitRecord:
    return UnitRecord(name=name, target=name, kind="lib", start_s=0.0, total_s=1.0)


@pytest.mark.parametrize(
    ("outcome", "units", "fresh", "trigger", "expected"),
    [
        ("success", [], 10, ["src/lib.rs"], "noop"),
        ("success", ["app", "serde"], 0, [], "full"),
        ("success", ["app", "serde"], 0, ["src/main.rs"], "full"),
        # A crate without dependencies rebuilds all of itself on a save: an edit.
        ("success", ["app"], 0, ["src/main.rs"], "edit"),
        # ...but the same from scratch, or after a manifest change, is a full build.
        ("success", ["app", "core"], 0, [], "full"),
        ("success", ["app", "core"], 0, ["Cargo.toml"], "full"),
        ("success", ["app", "core"], 5, ["core/src/lib.rs"], "edit"),
        ("failure", ["app"], 5, ["src/main.rs"], "edit"),
        ("success", ["app", "serde"], 5, ["Cargo.lock"], "deps"),
        ("cancelled", ["app"], 5, ["src/main.rs"], None),
    ],
)
def test_build_kinds(
    outcome: Any, units: list[str], fresh: int, trigger: list[str], expected: str | None
) -> None:
    members = frozenset({"app", "core"})
    found = kinds.classify(outcome, [record(n) for n in units], fresh, members, trigger)
    assert found == expected
