"""`rbd bench`'s output: one table per mode, and the progress line while it runs."""

from __future__ import annotations

from rbd.client.render import sccache_line, seconds

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from rbd.contract.schema import BenchResult

MODE_TITLES = {
    "clean": "clean build (cargo clean first)",
    "incremental": "incremental rebuild after an edit of {file} ({kind})",
}
COLUMNS = (
    "config",
    "mean",
    "σ",
    "min",
    "median",
    "Δ median",
    "Δ%",
    "queued",
    "compile",
    "link",
    "",
)


def table(report: Mapping[str, Any]) -> str:
    """report: a BenchReport, or one an older rbd stored (read with care)."""
    edit = report.get("edit") or {}
    lines = [
        f"rbd bench {report['project']}",
        f"{report['runs']} counted runs per configuration after {report['warmup']} warm-up, "
        f"interleaved; Δ against {report.get('baseline', 'default')}",
    ]
    modes = list(dict.fromkeys(r["mode"] for r in report["results"]))
    for mode in modes:
        rows = [r for r in report["results"] if r["mode"] == mode]
        title = MODE_TITLES.get(mode, mode).format(
            file=edit.get("file", "?"), kind=edit.get("kind", "?")
        )
        lines += ["", title, *_grid([_cells(r) for r in rows])]
        best = _best(rows)
        if best is not None:
            lines.append(f"fastest: {label(best)} ({_pct(best['delta_pct'])} {mode})")
        for row in rows:
            if row.get("sccache"):
                lines.append(f"{label(row)}: {sccache_line(row['sccache'])} (median run)")
    if any(r.get("cache") for r in report["results"]):
        lines += [
            "",
            "sccache (cold): every run from an empty cache; (warm): right after a cold run,"
            " from the cache it filled",
        ]
    noisy = [r for r in report["results"] if r.get("noisy")]
    if noisy:
        lines += ["", "~ noisy: σ above 10% of the mean; more --runs or a quieter machine help"]
    lines.append(
        "queued, compile, link: the median run's critical path (queued: units ready,"
        " waiting for a core; compile = frontend + codegen); link measured"
    )
    return "\n".join(lines)


def label(row: Mapping[str, Any]) -> str:
    """A row's configuration, with the cache it started from: `sccache (warm)`."""
    return f"{row['config']} ({row['cache']})" if row.get("cache") else str(row["config"])


def _cells(row: BenchResult) -> list[str]:
    if not row["available"] or row["median_s"] is None:
        why = row.get("reason") or "not measured"
        state = "unavailable" if not row["available"] else "failed"
        return [label(row), f"{state}: {why}"]
    phases: Mapping[str, Any] = row.get("phases") or {}
    return [
        label(row),
        seconds(row["mean_s"]),
        seconds(row["stddev_s"]),
        seconds(row["min_s"]),
        seconds(row["median_s"]),
        _signed(row["delta_s"]),
        _pct(row["delta_pct"]),
        seconds(phases.get("queue_s")),
        _split(phases),
        seconds(phases.get("link_s")),
        "~ noisy" if row.get("noisy") else "",
    ]


def _split(phases: Mapping[str, Any]) -> str:
    compile_s = phases.get("compile_s")
    front, codegen = phases.get("frontend_s"), phases.get("codegen_s")
    if front is None or codegen is None:
        return seconds(compile_s)
    return f"{seconds(compile_s)} ({seconds(front)}+{seconds(codegen)})"


def _signed(value: float | None) -> str:
    if value is None:
        return "—"
    if abs(value) < 0.0005:
        return "±0"
    return ("+" if value > 0 else "−") + seconds(abs(value))


def _pct(value: float | None) -> str:
    if value is None:
        return "—"
    if value == 0:
        return "±0%"
    return f"{'+' if value > 0 else '−'}{abs(value):.1f}%"


def _best(rows: list[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The fastest configuration, if it beat the baseline by more than either's spread."""
    base = next((r for r in rows if r.get("delta_s") == 0 and r.get("median_s")), None)
    measured = [r for r in rows if r.get("median_s") is not None and r.get("delta_s")]
    best = min(measured, key=lambda r: r["median_s"], default=None)
    if base is None or best is None:
        return None
    spread = max(base.get("stddev_s") or 0.0, best.get("stddev_s") or 0.0)
    return best if -best["delta_s"] > spread else None


def _grid(rows: list[list[str]]) -> list[str]:
    full = [r for r in rows if len(r) == len(COLUMNS)]
    widths = [max(len(c) for c in col) for col in zip(COLUMNS, *full, strict=False)]

    def line(cells: list[str]) -> str:
        if len(cells) != len(COLUMNS):
            return f"{cells[0]:<{widths[0]}}  {cells[1]}"
        out = [f"{cells[0]:<{widths[0]}}"]
        out += [f"{c:>{w}}" for c, w in zip(cells[1:-1], widths[1:-1], strict=True)]
        return "  ".join([*out, cells[-1]]).rstrip()

    return [line(list(COLUMNS)), *(line(r) for r in rows)]


def progress(event: Mapping[str, Any], width: int = 24) -> str:
    done, total = int(event.get("done") or 0), int(event.get("total") or 0)
    filled = width * done // total if total else 0
    bar = "█" * filled + "·" * (width - filled)
    what = "" if event.get("counted") else " (warm-up)"
    return (
        f"bench [{bar}] {done}/{total}  {event.get('mode', '')} {event.get('config', '')}"
        f"{what} {seconds(event.get('wall_s'))}"
    )


def plain(event: Mapping[str, Any]) -> str:
    """A bench_progress event as one line of its own, for output that is no terminal (a
    log, `rbd tail`): the bar's `\\r` redraws would pile up there."""
    done, total = int(event.get("done") or 0), int(event.get("total") or 0)
    what = "" if event.get("counted") else " (warm-up)"
    outcome = event.get("outcome")
    failed = f" {outcome}" if outcome and outcome != "success" else ""
    return (
        f"bench {done}/{total}  {event.get('mode', '')} {event.get('config', '')}{what}"
        f" {seconds(event.get('wall_s'))}{failed}"
    )


def started(event: Mapping[str, Any]) -> str:
    """A bench_started event: what the bench measures and how many builds that takes."""
    configs = ", ".join(event.get("configs") or [])
    modes = " and ".join(event.get("modes") or [])
    if event.get("idle"):
        return (
            f"idle bench started: {configs} ({modes}), {event.get('total')} builds at the"
            " lowest priority; the project's builds go on, a save stops it"
        )
    return (
        f"bench started: {configs} ({modes}), {event.get('runs')} counted runs after"
        f" {event.get('warmup')} warm-up, {event.get('total')} builds;"
        " the project's own builds wait for it"
    )


def finished(event: Mapping[str, Any]) -> str:
    """A bench_finished event: its stored report's id, or why it ended without one."""
    if event.get("error"):
        return event["error"] if event.get("idle") else f"bench ended: {event['error']}"
    report = event.get("report") or {}
    stored = f" (#{report['id']}; `rbd suggest` cites it)" if report.get("id") else ""
    return f"{'idle bench' if event.get('idle') else 'bench'} finished{stored}"
