"""`rbd bench`'s table (client.benchtable)."""

from __future__ import annotations

from typing import Any

from rbd.client import benchtable


def result(config: str, median: float | None, **extra: Any) -> dict[str, Any]:
    row = {
        "config": config,
        "mode": "incremental",
        "available": True,
        "reason": None,
        "mean_s": median,
        "stddev_s": 0.01 if median else None,
        "min_s": median,
        "median_s": median,
        "delta_s": None,
        "delta_pct": None,
        "noisy": False,
        "phases": {"compile_s": 0.3, "frontend_s": None, "codegen_s": None, "link_s": 0.1},
    }
    row.update(extra)
    return row


REPORT = {
    "project": "/src/app",
    "runs": 6,
    "warmup": 2,
    "baseline": "default",
    "edit": {"file": "src/routes.rs", "kind": "string"},
    "results": [
        result("default", 1.2, delta_s=0.0, delta_pct=0.0),
        result("line-tables-only", 0.4, delta_s=-0.8, delta_pct=-66.7, noisy=True),
        result("cranelift", None, available=False, reason="needs nightly"),
        result("mold", None, reason="build failure: error: linking failed"),
    ],
}


def test_table_has_one_row_per_configuration_and_names_the_fastest() -> None:
    text = benchtable.table(REPORT)
    lines = text.splitlines()
    assert "incremental rebuild after an edit of src/routes.rs (string)" in lines
    (lt,) = [line for line in lines if line.startswith("line-tables-only")]
    assert "400 ms" in lt and "−800 ms" in lt and "−66.7%" in lt and lt.endswith("~ noisy")
    assert any(
        line.startswith("cranelift") and "unavailable: needs nightly" in line for line in lines
    )
    assert any(line.startswith("mold") and "failed: build failure" in line for line in lines)
    assert "fastest: line-tables-only (−66.7% incremental)" in lines
    assert any("σ above 10%" in line for line in lines)


def test_progress_line_counts_and_marks_warmups() -> None:
    event = {"done": 3, "total": 12, "mode": "clean", "config": "mold", "counted": False,
             "wall_s": 1.5}  # fmt: skip
    line = benchtable.progress(event, width=12)
    assert "[███·········] 3/12" in line and "mold (warm-up) 1.50 s" in line


def test_no_fastest_is_named_within_the_runs_spread() -> None:
    rows = [
        result("default", 1.2, delta_s=0.0, delta_pct=0.0, stddev_s=0.05),
        result("mold", 1.17, delta_s=-0.03, delta_pct=-2.5),
    ]
    assert "fastest" not in benchtable.table({**REPORT, "results": rows})
