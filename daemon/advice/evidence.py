"""`rbd bench` results as the evidence of `rbd suggest`'s suggestions.

A suggestion whose change a bench configuration measures gets that measurement as its
expected saving (source "measured") when the configuration was faster than the
baseline by more than the runs' spread; when it was not, the suggestion is withdrawn
and the measurement says why. Suggestions no bench measures keep their estimates.
Each configuration's latest measurement counts, whichever bench made it: a later bench
of other configurations does not send a measured suggestion back to its estimate.

Like with like: a suggestion for what a save costs (estimated from the median edit
rebuild, rules.Context.incremental) cites the bench's incremental rows, whose every run
edits one source file of the copy (an edit rebuild); one for dependency rebuilds cites
the clean rows (MEASURED_BY).

Only a fresh measurement counts (daemon.bench.freshness: same toolchain, Cargo.lock and
profile as the project has now, younger than a week). A stale one is still cited, with
its age and why it is stale, but neither replaces the estimate nor withdraws the
suggestion: a number from another toolchain or lockfile would be ranked as if it held.
Every cited measurement says how sure it is: its age, its runs and their spread (σ, the
larger of the configuration's and the baseline's).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rbd.contract.schema import BenchConditions, Suggestion, Withdrawn
from rbd.daemon.advice import rules
from rbd.daemon.bench import freshness

# Suggestion id -> (bench configuration, the mode that measures its effect).
MEASURED_BY = {
    "debuginfo-line-tables": ("line-tables-only", "incremental"),
    "debuginfo-none": ("no-debuginfo", "incremental"),
    "linker-lld": ("lld", "incremental"),
    "linker-mold": ("mold", "incremental"),
    "linker-wild": ("wild", "incremental"),
    "split-debuginfo": ("split-debuginfo", "incremental"),
    "cranelift": ("cranelift", "incremental"),
    "parallel-frontend": ("parallel-frontend", "incremental"),
    # It speeds up dependency rebuilds, which only a clean build measures.
    "deps-opt-level": ("deps-opt", "clean"),
}


def _latest(
    measurements: Sequence[Mapping[str, Any]], config: str, mode: str
) -> Mapping[str, Any] | None:
    for measured in measurements:
        result = measured.get("result") or {}
        if (
            result.get("config") == config
            and result.get("mode") == mode
            and result.get("cache") is None
        ):
            return measured
    return None


def cite(
    found: list[Suggestion],
    measurements: Sequence[Mapping[str, Any]],
    current: BenchConditions | None = None,
    now: datetime | None = None,
) -> tuple[list[Suggestion], list[Withdrawn]]:
    """(suggestions with bench evidence where there is some, re-ranked by rules.rank; the
    withdrawn ones as {"id", "reason"}).

    measurements: each configuration's latest measurement across the project's benches
    (sqlite.BenchMeasurement, from Store.latest_results): a configuration keeps the
    measurement of the last bench that ran it, whatever later benches measured. The
    gain is against the baseline of that same bench, never of another one.

    current: the project's conditions now (freshness.Reader.read); None when they could
    not be read, which makes every measurement stale. now: the time ages are counted to."""
    now = now or datetime.now(UTC)
    kept: list[Suggestion] = []
    withdrawn: list[Withdrawn] = []
    for made in found:
        config, mode = MEASURED_BY.get(made["id"], (None, None))
        measured = _latest(measurements, config, mode) if config and mode else None
        row = None if measured is None else measured.get("result")
        base = None if measured is None else measured.get("base")
        baseline = None if measured is None else measured.get("baseline")
        row_s = None if row is None else row.get("median_s")
        base_s = None if base is None else base.get("median_s")
        if measured is None or row is None or base is None or row_s is None or base_s is None:
            kept.append(made)
            continue
        if config == baseline:
            kept.append(made)
            continue
        gain = float(base_s) - float(row_s)
        spread = max(float(base.get("stddev_s") or 0.0), float(row.get("stddev_s") or 0.0))
        delta = row.get("delta_pct")
        pct = "" if delta is None else f" {float(delta):+.1f}%"
        when = freshness.age(measured.get("bench_at"), now)
        basis = (
            f"rbd bench #{measured.get('bench_id', '?')} ({when}): {config}{pct} "
            f"{mode} on this project, median {float(base_s):.2f} s -> "
            f"{float(row_s):.2f} s over {measured.get('runs')} runs, σ {spread:.2f} s"
        )
        stale = freshness.stale(measured.get("conditions"), current, measured.get("bench_at"), now)
        if stale is not None:
            # Cited, never used: the estimate stands and the suggestion is not withdrawn.
            expected = made["expected"]
            note = f"{basis}; stale: {stale} (not used; a new bench measures it again)"
            kept.append({**made, "expected": {**expected, "basis": f"{expected['basis']}; {note}"}})
            continue
        if gain <= spread:
            why = "slower" if gain < 0 else "no faster than the runs' spread"
            withdrawn.append({"id": made["id"], "reason": f"{basis} ({why})"})
            continue
        made = {
            **made,
            "expected": {"saves_s": round(gain, 3), "source": "measured", "basis": basis},
        }
        kept.append(made)
    return rules.rank(kept), withdrawn
