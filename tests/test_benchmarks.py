"""The performance suite runs: each fast figure at its quick sizes gives well-formed rows,
and the runner prints them. No timing is asserted: 2 shared cores make quick numbers
meaningless; benchmarks/suite.py without --quick is what measures."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SHARED_CACHE

ROOT = Path(__file__).resolve().parent.parent

# Imported by name: benchmarks/ is not among mypy's files (pyproject.toml), and a
# plain import here would pull all of it into every `mypy` run of the checks.
suite = importlib.import_module("benchmarks.suite")

# (module, function): the figures quick enough for every test run (a few seconds each).
FAST = [
    ("benchmarks.loop_figures", "figure1"),
    ("benchmarks.storm", "run"),
    ("benchmarks.cancel", "run"),
    ("benchmarks.loop_figures", "figure4"),
    ("benchmarks.loop_figures", "figure5_client"),
    ("benchmarks.client_startup", "run"),
    ("benchmarks.footprint", "run"),
    ("benchmarks.store_bench", "run"),
    ("benchmarks.scaling", "run"),
    ("benchmarks.serve_loop", "run"),
    ("benchmarks.accounting", "run"),
    ("benchmarks.slowdown", "run"),
]


def check_rows(rows: Any) -> None:
    assert isinstance(rows, list) and rows
    for row in rows:
        assert isinstance(row, tuple) and len(row) == 4, row
        measure, value, goal, met = row
        assert isinstance(measure, str) and measure.strip(), row
        assert isinstance(value, str) and value.strip(), row
        assert goal is None or (isinstance(goal, str) and goal.strip()), row
        assert met is None or isinstance(met, bool), row


@pytest.mark.parametrize(("module", "function"), FAST, ids=[f"{m}.{f}" for m, f in FAST])
def test_quick_figure_gives_well_formed_rows(
    module: str, function: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # figure4 compiles rbd's shim into the user's cache dir, as the daemon would:
    # here the session's shared one (it is compiled there once anyway).
    monkeypatch.setenv("XDG_CACHE_HOME", str(SHARED_CACHE))
    check_rows(getattr(importlib.import_module(module), function)(True))


def test_suite_prints_a_report_per_figure_and_skips_what_is_missing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "suite.py"), "--quick", "--only", "3,8"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "figure 3: cancelling an outdated build" in done.stdout
    assert "| orphan rustc processes after the last build |" in done.stdout
    assert "| speed-up defaults / tuned |" in done.stdout


def test_suite_only_refuses_unknown_figures() -> None:
    assert suite.parse_only("7,2") == [2, 7]
    assert suite.parse_only(None) == [f.number for f in suite.FIGURES]
    for bad in ("10", "two"):
        with pytest.raises(Exception, match="figure"):
            suite.parse_only(bad)


def test_a_missing_module_is_skipped_with_a_note() -> None:
    figure = suite.Figure(99, "test", (suite.Part("benchmarks.no_such_module"),))
    rows, notes = suite.run_figure(figure, True, {})
    assert rows == []
    assert notes == ["skipped: benchmarks.no_such_module is missing"]
