"""`rbd bench` results as the evidence of `rbd suggest`'s suggestions.

A suggestion whose change a bench configuration measures gets that measurement as its
expected saving (source "measured") when the configuration was faster than the
baseline by more than the runs' spread; when it was not, the suggestion is withdrawn
and the measurement says why. Suggestions no bench measures keep their estimates.

Like with like: a suggestion for what a save costs (estimated from the median edit
rebuild, rules.Context.incremental) cites the bench's incremental rows, whose every run
edits one source file of the copy (an edit rebuild); one for dependency rebuilds cites
the clean rows (MEASURED_BY).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rbd.contract.schema import Suggestion, Withdrawn

# Suggestion id -> (bench configuration, the mode that measures its effect).
MEASURED_BY = {
    "debuginfo-line-tables": ("line-tables-only", "incremental"),
    "linker-lld": ("lld", "incremental"),
    "linker-mold": ("mold", "incremental"),
    "cranelift": ("cranelift", "incremental"),
    # It speeds up dependency rebuilds, which only a clean build measures.
    "deps-opt-level": ("deps-opt", "clean"),
}


def _row(bench: Mapping[str, Any], config: str, mode: str) -> dict[str, Any] | None:
    for row in bench.get("results") or []:
        if row.get("config") == config and row.get("mode") == mode:
            return dict(row)
    return None


def cite(
    found: list[Suggestion], bench: Mapping[str, Any] | None
) -> tuple[list[Suggestion], list[Withdrawn]]:
    """(suggestions with bench evidence where there is some, re-ranked; the withdrawn ones
    as {"id", "reason"}).

    bench: the latest stored report (a schema.BenchReport), read with care: it is JSON an
    older rbd may have stored."""
    if not bench:
        return found, []
    kept: list[Suggestion] = []
    withdrawn: list[Withdrawn] = []
    baseline = str(bench.get("baseline") or "default")
    when = str(bench.get("finished_at") or "")[:10]
    for made in found:
        config, mode = MEASURED_BY.get(made["id"], (None, None))
        row = _row(bench, config, mode) if config and mode else None
        base = _row(bench, baseline, mode) if mode else None
        row_s = None if row is None else row.get("median_s")
        base_s = None if base is None else base.get("median_s")
        if row is None or base is None or row_s is None or base_s is None or config == baseline:
            kept.append(made)
            continue
        gain = float(base_s) - float(row_s)
        spread = max(float(base.get("stddev_s") or 0.0), float(row.get("stddev_s") or 0.0))
        measured = (
            f"rbd bench #{bench.get('id', '?')} ({when}): {config} {row['delta_pct']:+.1f}% "
            f"{mode} on this project, median {base_s:.2f} s -> "
            f"{row_s:.2f} s over {bench.get('runs')} runs"
        )
        if gain <= spread:
            why = "slower" if gain < 0 else "no faster than the runs' spread"
            withdrawn.append({"id": made["id"], "reason": f"{measured} ({why})"})
            continue
        made = {
            **made,
            "expected": {"saves_s": round(gain, 3), "source": "measured", "basis": measured},
        }
        kept.append(made)
    kept.sort(key=lambda made: -made["expected"]["saves_s"])
    return kept, withdrawn
