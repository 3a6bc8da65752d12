"""Bench results as suggestion evidence (rbd.daemon.advice.evidence)."""

from __future__ import annotations

from typing import Any

from rbd.contract.schema import Suggestion
from rbd.daemon.advice import evidence


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
}


def test_a_measured_gain_replaces_the_estimate_and_reranks() -> None:
    found = [made("sccache", 0.5), made("debuginfo-line-tables", 0.3)]
    kept, withdrawn = evidence.cite(found, BENCH)
    assert [m["id"] for m in kept] == ["debuginfo-line-tables", "sccache"]
    expected = kept[0]["expected"]
    assert expected["source"] == "measured" and expected["saves_s"] == 0.8
    assert "rbd bench #7 (2026-11-22): line-tables-only -66.7% incremental" in expected["basis"]
    assert "1.20 s -> 0.40 s over 6 runs" in expected["basis"]
    assert withdrawn == []


def test_slower_or_within_noise_withdraws_the_suggestion() -> None:
    kept, withdrawn = evidence.cite([made("linker-mold", 0.2), made("linker-lld", 0.2)], BENCH)
    assert kept == []
    reasons = {w["id"]: w["reason"] for w in withdrawn}
    assert reasons["linker-mold"].endswith("(slower)")
    assert reasons["linker-lld"].endswith("(no faster than the runs' spread)")


def test_unmeasured_configurations_and_modes_keep_the_estimate() -> None:
    found = [made("cranelift", 0.4), made("deps-opt-level", 0.0), made("split-debuginfo", 0.1)]
    kept, withdrawn = evidence.cite(found, BENCH)
    assert kept == sorted(found, key=lambda m: -m["expected"]["saves_s"]) and withdrawn == []
    assert evidence.cite(found, None) == (found, [])
