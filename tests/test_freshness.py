"""Whether a bench measurement still holds (rbd.daemon.bench.freshness), what `suggest`
makes of a stale one (evidence.cite), and the idle-bench settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from rbd.contract.schema import BenchConditions, BenchReport, Suggestion
from rbd.daemon.advice import evidence
from rbd.daemon.bench import freshness
from rbd.daemon.errors import ConfigError
from rbd.daemon.projects import settings
from rbd.daemon.store.sqlite import Store
from tests.conftest import make_crate

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
THEN = (NOW - timedelta(hours=3)).isoformat()
RAN_WITH: BenchConditions = {
    "rustc": "rustc 1.95.0 (59807616e 2026-04-14)",
    "cargo": "cargo 1.95.0 (f2d3ce0bd 2026-03-21)",
    "lock_digest": "0123456789abcdef",
    "profile": {"name": "dev"},
}


def test_the_same_conditions_within_a_week_are_fresh() -> None:
    assert freshness.stale(RAN_WITH, dict(RAN_WITH), THEN, NOW) is None
    week = (NOW - freshness.MAX_AGE + timedelta(minutes=1)).isoformat()
    assert freshness.stale(RAN_WITH, RAN_WITH, week, NOW) is None


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            {"rustc": "rustc 1.96.0 (aaaaaaaaa 2026-05-28)"},
            "rustc changed since (rustc 1.95.0 (59807616e 2026-04-14) -> rustc 1.96.0",
        ),
        ({"cargo": "cargo 1.96.0"}, "cargo changed since"),
        ({"lock_digest": "fedcba9876543210"}, "Cargo.lock changed since"),
        ({"lock_digest": None}, "Cargo.lock changed since"),
        ({"profile": {"name": "dev", "debug": "line-tables-only"}}, "the profile changed since"),
        (
            {"rustc": "rustc 1.96.0", "lock_digest": "fedcba9876543210"},
            "rustc and Cargo.lock changed since",
        ),
    ],
)
def test_a_changed_toolchain_lockfile_or_profile_is_stale(change: dict[str, Any], why: str) -> None:
    current = cast(BenchConditions, {**RAN_WITH, **change})
    reason = freshness.stale(RAN_WITH, current, THEN, NOW)
    assert reason is not None and reason.startswith(why), reason


def test_old_unknown_or_unreadable_is_stale() -> None:
    old = (NOW - freshness.MAX_AGE - timedelta(minutes=1)).isoformat()
    assert freshness.stale(RAN_WITH, RAN_WITH, old, NOW) == "older than 7 days"
    # A report an older rbd stored: nothing says what it ran with.
    assert "older rbd" in str(freshness.stale(None, RAN_WITH, THEN, NOW))
    assert "cannot be read" in str(freshness.stale(RAN_WITH, None, THEN, NOW))
    unreadable = cast(BenchConditions, {**RAN_WITH, "rustc": None})
    assert "cannot be read" in str(freshness.stale(unreadable, unreadable, THEN, NOW))
    assert freshness.stale(RAN_WITH, RAN_WITH, "yesterday", NOW) == "its time is unknown"


def test_ages_read_in_the_largest_whole_unit() -> None:
    ago = [timedelta(seconds=40), timedelta(minutes=30), timedelta(hours=5), timedelta(days=3)]
    assert [freshness.age((NOW - a).isoformat(), NOW) for a in ago] == [
        "40 s ago",
        "30 min ago",
        "5 h ago",
        "3 days ago",
    ]
    # sqlite.now_iso's times carry their offset; one without is UTC.
    assert freshness.age("2026-12-03T11:00:00", NOW) == "60 min ago"


@pytest.mark.anyio
async def test_the_reader_asks_the_tools_once_per_toolchain(tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "demo", files={"Cargo.lock": "version = 4\n"})
    asked: list[list[str]] = []

    async def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str | None:
        asked.append(argv)
        return "rustc 1.95.0 (x)\nhost: x" if argv[-1] == "-vV" else "cargo 1.95.0 (y)\n"

    reader = freshness.Reader(run)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    argv = ["cargo", "build", "--release"]
    first = await reader.read(crate, argv, env)
    assert first["rustc"] == "rustc 1.95.0 (x)" and first["cargo"] == "cargo 1.95.0 (y)"
    assert first["profile"] == {"name": "release"} and first["lock_digest"]
    (crate / "Cargo.lock").write_text("version = 4\n# changed\n")
    second = await reader.read(crate, argv, env)
    # Two tools, asked once: the lockfile is read every time, the versions are cached.
    assert len(asked) == 2
    assert second["lock_digest"] != first["lock_digest"]
    assert freshness.stale(first, second, THEN, NOW) == "Cargo.lock changed since"


def suggestion(id: str, saves_s: float) -> Suggestion:
    return {
        "id": id,
        "title": id,
        "evidence": "",
        "change": {},
        "expected": {"saves_s": saves_s, "source": "estimate", "basis": "this project's builds"},
        "tradeoffs": "",
        "needs_nightly": False,
        "full_rebuild": False,
    }


def measurements(tmp_path: Path, ran_with: BenchConditions | None) -> list[Any]:
    def row(config: str, median: float, stddev: float) -> dict[str, Any]:
        return {"config": config, "mode": "incremental", "median_s": median, "stddev_s": stddev}

    report: dict[str, Any] = {
        "runs": 6,
        "baseline": "default",
        "results": [
            row("default", 1.20, 0.02),
            row("line-tables-only", 0.40, 0.03),
            row("mold", 1.30, 0.02),
        ],
    }
    if ran_with is not None:
        report["conditions"] = ran_with
    store = Store(tmp_path / "rbd.sqlite3")
    try:
        store.record_bench("/p", cast(BenchReport, report))
        return list(store.latest_results("/p"))
    finally:
        store.close()


def test_suggest_cites_a_fresh_measurement_with_its_age_runs_and_spread(tmp_path: Path) -> None:
    found = [suggestion("debuginfo-line-tables", 0.3)]
    (kept,), withdrawn = evidence.cite(found, measurements(tmp_path, RAN_WITH), RAN_WITH)
    assert kept["expected"]["source"] == "measured" and kept["expected"]["saves_s"] == 0.8
    assert " s ago)" in kept["expected"]["basis"]
    assert "over 6 runs, σ 0.03 s" in kept["expected"]["basis"]
    assert withdrawn == []


@pytest.mark.parametrize("ran_with", [None, {**RAN_WITH, "lock_digest": "ffffffffffffffff"}])
def test_a_stale_measurement_is_cited_as_stale_and_never_used(
    tmp_path: Path, ran_with: BenchConditions | None
) -> None:
    found = [suggestion("debuginfo-line-tables", 0.3), suggestion("linker-mold", 0.2)]
    kept, withdrawn = evidence.cite(found, measurements(tmp_path, ran_with), RAN_WITH)
    # The estimates stand, and the slower mold is not withdrawn on a stale number.
    assert [(s["id"], s["expected"]["saves_s"]) for s in kept] == [
        ("debuginfo-line-tables", 0.3),
        ("linker-mold", 0.2),
    ]
    assert withdrawn == []
    for made in kept:
        basis = made["expected"]["basis"]
        assert made["expected"]["source"] == "estimate"
        assert basis.startswith("this project's builds; rbd bench #1 (")
        assert "; stale: " in basis and "not used" in basis


def test_idle_benches_are_off_by_default_and_settable(tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "demo")
    config = settings.load(crate, {}, {})
    assert config.auto_bench is False
    assert config.auto_bench_idle_s == 300.0 and config.auto_bench_budget_s == 1800.0
    (crate / "rbd.toml").write_text("auto_bench = true\nauto_bench_idle_s = 2\n")
    config = settings.load(crate, {"RBD_AUTO_BENCH_BUDGET_S": "60"}, {})
    assert (config.auto_bench, config.auto_bench_idle_s, config.auto_bench_budget_s) == (
        True,
        2.0,
        60.0,
    )
    assert settings.load(crate, {"RBD_AUTO_BENCH": "no"}, {}).auto_bench is False


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ('auto_bench = "yes"\n', {}, "rbd.toml: auto_bench must be true or false"),
        ("auto_bench_idle_s = 0\n", {}, "auto_bench_idle_s must be a number, 0 <"),
        ("auto_bench_max_load = -1\n", {}, "auto_bench_max_load must be a number"),
        ("", {"RBD_AUTO_BENCH": "maybe"}, "RBD_AUTO_BENCH must be true or false"),
        ("", {"RBD_AUTO_BENCH_IDLE_S": "soon"}, "RBD_AUTO_BENCH_IDLE_S must be a number"),
    ],
)
def test_bad_idle_bench_settings_are_one_clear_line(
    tmp_path: Path, toml: str, env: dict[str, str], message: str
) -> None:
    crate = make_crate(tmp_path / "demo", files={"rbd.toml": toml})
    with pytest.raises(ConfigError) as error:
        settings.load(crate, env, {})
    assert message in str(error.value) and "\n" not in str(error.value)
