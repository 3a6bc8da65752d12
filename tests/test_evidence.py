"""Bench results as suggestion evidence (rbd.daemon.advice.evidence)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from rbd.contract.schema import BenchConditions, BenchReport, Suggestion, Withdrawn
from rbd.daemon.advice import evidence, rules
from rbd.daemon.store.sqlite import BenchMeasurement, Store


def measured(tmp_path: Path, *benches: dict[str, Any]) -> list[BenchMeasurement]:
    """What suggest cites after these benches ran, oldest first: the store's latest
    measurement of each configuration."""
    store = Store(tmp_path / "rbd.sqlite3")
    try:
        for bench in benches:
            store.record_bench("/p", cast(BenchReport, bench))
        return store.latest_results("/p")
    finally:
        store.close()


def made(id: str, saves_s: float) -> Suggestion:
    return {
        "id": id,
        "title": id,
        "evidence": "",
        "change": {},
        "expected": {"saves_s": saves_s, "source": "estimate", "basis": "rule"},
        "tradeoffs": "",
        "needs_nightly": False,
        "full_rebuild": False,
    }


def row(config: str, mode: str, median: float, stddev: float, pct: float) -> dict[str, Any]:
    return {
        "config": config,
        "mode": mode,
        "median_s": median,
        "stddev_s": stddev,
        "delta_pct": pct,
    }


# What the benches below ran with, and the project has now: their measurements are fresh.
CONDITIONS: BenchConditions = {
    "rustc": "rustc 1.95.0 (59807616e 2026-04-14)",
    "cargo": "cargo 1.95.0 (f2d3ce0bd 2026-03-21)",
    "lock_digest": "0123456789abcdef",
    "profile": {"name": "dev"},
}


def cite(
    found: list[Suggestion], results: list[BenchMeasurement]
) -> tuple[list[Suggestion], list[Withdrawn]]:
    return evidence.cite(found, results, CONDITIONS)


BENCH = {
    "id": 7,
    "runs": 6,
    "baseline": "default",
    "finished_at": "2026-11-22T01:00:00+00:00",
    "results": [
        row("default", "incremental", 1.20, 0.02, 0.0),
        row("line-tables-only", "incremental", 0.40, 0.01, -66.7),
        row("mold", "incremental", 1.25, 0.03, 4.2),
        row("lld", "incremental", 1.19, 0.05, -0.8),
        row("default", "clean", 30.0, 0.5, 0.0),
        {**row("cranelift", "incremental", 0, 0, 0), "median_s": None},
    ],
    "conditions": CONDITIONS,
}


def test_a_measured_gain_replaces_the_estimate_and_reranks(tmp_path: Path) -> None:
    found = [made("sccache", 0.5), made("debuginfo-line-tables", 0.3)]
    kept, withdrawn = cite(found, measured(tmp_path, BENCH))
    assert [m["id"] for m in kept] == ["debuginfo-line-tables", "sccache"]
    expected = kept[0]["expected"]
    assert expected["source"] == "measured" and expected["saves_s"] == 0.8
    assert "rbd bench #1 (" in expected["basis"]
    assert "line-tables-only -66.7% incremental" in expected["basis"]
    assert "1.20 s -> 0.40 s over 6 runs" in expected["basis"]
    assert withdrawn == []


def test_slower_or_within_noise_withdraws_the_suggestion(tmp_path: Path) -> None:
    found = [made("linker-mold", 0.2), made("linker-lld", 0.2)]
    kept, withdrawn = cite(found, measured(tmp_path, BENCH))
    assert kept == []
    reasons = {w["id"]: w["reason"] for w in withdrawn}
    assert reasons["linker-mold"].endswith("(slower)")
    assert reasons["linker-lld"].endswith("(no faster than the runs' spread)")


def test_unmeasured_configurations_and_modes_keep_the_estimate(tmp_path: Path) -> None:
    found = [made("cranelift", 0.4), made("deps-opt-level", 0.0), made("split-debuginfo", 0.1)]
    kept, withdrawn = cite(found, measured(tmp_path, BENCH))
    assert kept == sorted(found, key=lambda m: -rules.worth(m["expected"])) and withdrawn == []
    assert cite(found, []) == (kept, [])


def test_a_later_bench_of_other_configurations_keeps_the_first_measurement(
    tmp_path: Path,
) -> None:
    # As on a real app: `rbd bench --incremental`, then `--clean --configs default,deps-opt`.
    clean = {
        **BENCH,
        "results": [
            row("default", "clean", 40.0, 0.5, 0.0),
            row("deps-opt", "clean", 30.0, 0.5, -25.0),
            # Re-measured in another bench (another load): not the first bench's baseline.
            row("default", "incremental", 5.0, 0.1, 0.0),
        ],
    }
    results = measured(tmp_path, BENCH, clean)
    kept, _ = cite([made("debuginfo-line-tables", 4.07)], results)
    expected = kept[0]["expected"]
    # Still the first bench's measurement, against that bench's own baseline.
    assert expected["source"] == "measured" and expected["saves_s"] == 0.8
    assert "rbd bench #1 (" in expected["basis"]
    kept, _ = cite([made("deps-opt-level", 0.0)], results)
    assert kept[0]["expected"]["source"] == "measured"
    assert "rbd bench #2 (" in kept[0]["expected"]["basis"]


def test_a_failed_rerun_does_not_hide_the_last_measurement(tmp_path: Path) -> None:
    gone = {**row("line-tables-only", "incremental", 0, 0, 0), "median_s": None}
    failed = {**BENCH, "results": [row("default", "incremental", 1.2, 0.02, 0.0), gone]}
    kept, _ = cite([made("debuginfo-line-tables", 0.3)], measured(tmp_path, BENCH, failed))
    assert "rbd bench #1 (" in kept[0]["expected"]["basis"]


def test_measured_savings_rank_before_estimates_and_unrunnable_ones_last(
    tmp_path: Path,
) -> None:
    cranelift: Suggestion = {**made("cranelift", 3.0), "runnable": False}
    found = [cranelift, made("split-debuginfo", 1.5), made("debuginfo-line-tables", 4.0)]
    kept, _ = cite(found, measured(tmp_path, BENCH))
    # line-tables measured at 0.8 s ranks above a 1.5 s estimate; cranelift, whose
    # estimate is the largest, cannot run here and comes last.
    assert [m["id"] for m in kept] == ["debuginfo-line-tables", "split-debuginfo", "cranelift"]
