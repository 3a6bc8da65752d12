"""cargo's --timings report: the parser (on reports of the installed cargo) and the phase rule."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rbd.daemon.build import timings
from rbd.daemon.build.records import BuildResult
from rbd.daemon.build.shim import LinkRecord
from tests.conftest import make_crate

DATA = Path(__file__).parent / "data"
V195 = (1, 95)


def report(name: str) -> str:
    return (DATA / name).read_text()


def test_workspace_report_units_and_split() -> None:
    units = {
        (u.package, u.kind): u
        for u in timings.parse_report(report("cargo-1.95-timing-workspace.html"), V195)
    }
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
    units = timings.parse_report(report("cargo-1.95-timing-workspace.html"), V195)
    path = timings.critical_path(units)
    assert [(u.package, u.kind) for u in path] == [
        ("core", "custom-build"),
        ("core", "build-script-run"),
        ("core", "lib"),
        ("app", "bin"),
    ]
    phases = timings.phases(
        units, wall_s=0.62, first_unit_s=0.05, lock_wait_s=0.0, links_measured=False
    )
    assert phases["build_script_s"] == pytest.approx(0.3)
    assert phases["compile_s"] == pytest.approx(0.06 + 0.02 + 0.07)
    assert phases["frontend_s"] is None  # the bin on the path has no split
    assert phases["link_s"] is None
    parts = ["overhead_s", "lock_wait_s", "compile_s", "build_script_s", "other_s"]
    assert sum(phases[p] or 0.0 for p in parts) == pytest.approx(0.62)


def test_fresh_units_are_not_timed() -> None:
    html = report("cargo-1.95-timing-lib-bins.html")
    ran = [u for u in timings.parse_report(html, V195) if u.ran]
    assert {(u.target, u.kind) for u in ran} == {("p", "lib"), ("other", "bin"), ("p", "bin")}


def test_unknown_cargo_version_degrades_to_totals_with_a_warning() -> None:
    with capture_logs() as logs:
        units = timings.parse_report(report("cargo-1.95-timing-workspace.html"), (1, 80))
    assert all(u.frontend is None and u.codegen is None for u in units)
    assert [u.duration for u in units if u.is_script_run] == [pytest.approx(0.3)]
    assert logs[0]["event"] == "timings_schema_unknown"


@pytest.mark.parametrize(
    "html", ["<html></html>", "const UNIT_DATA = {not json", 'const UNIT_DATA = [{"i": 0}];']
)
def test_broken_reports_raise_a_format_error(html: str) -> None:
    with pytest.raises(timings.TimingsFormatError):
        timings.parse_report(html, V195)


def test_unreadable_report_leaves_units_and_logs(tmp_path: Path) -> None:
    bad = tmp_path / "cargo-timing-x.html"
    bad.write_text("<html>no data</html>")
    result = BuildResult(outcome="success", wall_s=1.0)
    with capture_logs() as logs:
        timings.apply_report(result, bad, V195, {}, first_unit_s=0.2, lock_wait_s=0.1)
    assert logs[0]["event"] == "timings_unreadable"
    assert result.phases["overhead_s"] == pytest.approx(0.1)
    assert result.phases["compile_s"] is None
    assert not bad.exists()


def test_report_of_the_installed_cargo(tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "lib", "lib_and_bin", {"src/lib.rs": "pub fn f() -> u8 { 1 }\n"})
    version = timings.cargo_version(
        subprocess.run(["cargo", "--version"], capture_output=True, text=True, check=True).stdout
    )
    done = subprocess.run(
        ["cargo", "build", "--timings"], cwd=crate, capture_output=True, text=True, check=True
    )
    saved = [line for line in done.stderr.splitlines() if "Timing report saved to" in line]
    path = Path(saved[0].split("saved to", 1)[1].strip())
    units = timings.parse_report(path.read_text(), version)
    lib = next(u for u in units if u.kind == "lib")
    assert version in timings.CHECKED_VERSIONS, f"cargo {version}: check its report format"
    assert lib.frontend is not None and lib.codegen is not None
    assert lib.frontend + lib.codegen == pytest.approx(lib.duration, abs=0.02)
    assert {u.kind for u in units if u.ran} == {"lib", "bin"}


def link(package: str, crate: str, kind: str, seconds: float) -> LinkRecord:
    start = 1_000_000_000_000
    return LinkRecord(package, "0.1.0", crate, kind, start, start + int(seconds * 1e9), 0, "cc")


def test_link_time_moves_out_of_compile_time_and_parts_still_add_up() -> None:
    units = timings.parse_report(report("cargo-1.95-timing-workspace.html"), V195)
    links = [
        link("app", "app", "bin", 0.05),
        link("core", "build_script_build", "custom-build", 0.02),
    ]
    assert timings.attach_links(units, links) == 0
    phases = timings.phases(
        units, wall_s=0.62, first_unit_s=0.05, lock_wait_s=0.0, links_measured=True
    )
    assert phases["link_s"] == pytest.approx(0.07)
    assert phases["compile_s"] == pytest.approx(0.06 + 0.02 + 0.07 - 0.07)
    parts = ["overhead_s", "lock_wait_s", "compile_s", "link_s", "build_script_s", "other_s"]
    assert sum(phases[p] or 0.0 for p in parts) == pytest.approx(0.62)


def test_link_measured_but_nothing_linked_on_the_path_is_zero_not_unknown() -> None:
    units = timings.parse_report(report("cargo-1.95-timing-workspace.html"), V195)
    phases = timings.phases(
        units, wall_s=0.62, first_unit_s=0.05, lock_wait_s=0.0, links_measured=True
    )
    assert phases["link_s"] == 0.0


def test_a_link_goes_to_the_unit_of_its_kind_when_targets_share_a_crate_name() -> None:
    rows = [("", 0.1, 0.2), (' t "lib" (test)', 0.1, 0.3)]
    rows += [(' tool "bin" (test)', 0.3, 0.3), (' tool "bin"', 0.3, 0.2)]
    data = [
        {"i": i, "name": "t", "version": "0.1.0", "target": text, "start": start, "duration": d}
        for i, (text, start, d) in enumerate(rows)
    ]
    html = "<script>const UNIT_DATA = " + json.dumps(data) + ";</script>"
    units = timings.parse_report(html, V195)
    kinds = [(u.target, u.kind) for u in units]
    assert kinds == [("t", "lib"), ("t", "test"), ("tool", "test"), ("tool", "bin")]
    unmatched = timings.attach_links(
        units,
        [link("t", "t", "test", 0.1), link("t", "tool", "bin", 0.05), link("x", "x", "bin", 1.0)],
    )
    assert unmatched == 1
    assert [u.link for u in units] == [None, pytest.approx(0.1), None, pytest.approx(0.05)]
