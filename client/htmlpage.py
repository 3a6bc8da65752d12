"""A build, or a project's history, drawn as one self-contained HTML page
(`rbd show ID --html FILE`, `rbd report --html FILE`).

The page is inline SVG and CSS with one small script, and fetches nothing: its
Content-Security-Policy allows no source at all but its own script (by hash),
inline styles and data: images. Everything that comes from the user's project
(crate names, paths, triggers, dirty reasons, diagnostics) reaches the page only
through `_text` (HTML-escaped, attributes too); the script reads the page's own
SVG `<title>`s and writes them with `textContent`, so no project text is ever
parsed as markup, and a `<script>` in a crate name stays text. An injected
script would not run anyway: its hash is not the one the policy allows.

Every drawn thing has an element a test (or a script) can find: a build's units
are `.unit` groups (`data-unit`: the unit's index in `units`), a history's bars
`.build` groups (`data-build`: the build's id), the phase segments `.phase`
(`data-phase`: a PHASE_KEYS key, or `unknown`), step changes `.step`. Each has
an SVG `<title>`: the browser's tooltip, and what the page's detail panel shows
on hover.

Numbers are drawn as measured: a phase rbd could not measure (null) is drawn as
`not measured` (hatched grey, the wall time the measured phases leave), never as
0; a unit cargo did not time gets a row and no bar.

Only `--html` imports this module: `rbd status` and the other commands never pay
for it.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math

from rbd.client import render
from rbd.contract import protocol

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any

    from rbd.contract.schema import BuildDetail, BuildSummary, Explain, Trend, Unit, UnitShare

# Each phase's label and colour; drawn in PHASE_KEYS' order (frontend and codegen,
# the two parts of compile, in its place where both are known).
PHASES: dict[str, tuple[str, str]] = {
    "overhead_s": ("cargo overhead", "#8c8c8c"),
    "queue_s": ("queue (ready, waiting for a core)", "url(#hatch-queue)"),
    "compile_s": ("compile", "#4e79a7"),
    "frontend_s": ("frontend", "#86b0de"),
    "codegen_s": ("codegen", "#2f5d8a"),
    "link_s": ("link", "#b07aa1"),
    "build_script_s": ("build scripts", "#f28e2b"),
    "lock_wait_s": ("lock wait", "#e15759"),
    "other_s": ("other", "#d4d4d4"),
}
UNKNOWN = ("not measured", "url(#hatch-unknown)")
# A unit's time the split does not cover (a binary's compile: cargo gives it no split).
UNIT_COLOUR = "#6f9bc8"

KINDS: dict[str, tuple[str, str]] = {
    "edit": ("edit: only workspace members rebuilt", "#2a9d8f"),
    "deps": ("deps: dependencies rebuilt too", "#e9b949"),
    "full": ("full: nothing was fresh", "#8e6bbf"),
    "noop": ("noop: nothing rebuilt", "#b5b5b5"),
}
NO_KIND = ("kind unknown", "#ffffff")

# A build's outcome as a mark on its bar (render.MARKS' timeout glyph is missing from
# the usual Linux fonts).
OUTCOME_MARKS = {
    "success": "✓",
    "failure": "✗",
    "cancelled": "⊘",
    "interrupted": "⚠",
    "timeout": "◷",
}

UNIT_KINDS = {"custom-build": "build script (compile)", "build-script-run": "build script (run)"}

# The units chart: label column, plot width, row height (px).
LABEL_W = 300
PLOT_W = 860
ROW_H = 16
BAR_H = 10
# The history chart: bar width and pitch, plot height (px).
HBAR_W = 10
HBAR_STEP = 14
HPLOT_H = 240
# Bars of the history taller than this many times the 90th percentile are clipped
# (their value written above them), so that a 75 s full build leaves a 0.6 s edit
# rebuild visible beside it.
CLIP_RATIO = 3.0

STYLE = """
:root { color-scheme: light; }
body { font: 13px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif;
  margin: 20px 24px 80px; color: #1d1d1f; background: #fff; }
h1 { font-size: 19px; margin: 0 0 4px; }
h2 { font-size: 15px; margin: 22px 0 6px; }
.muted, .kind { color: #6b6b6b; fill: #6b6b6b; }
.meta { display: grid; grid-template-columns: max-content 1fr; gap: 1px 14px; margin: 8px 0; }
.meta dt { color: #6b6b6b; } .meta dd { margin: 0; overflow-wrap: anywhere; }
.badge { display: inline-block; padding: 0 7px; border-radius: 9px; font-size: 12px;
  border: 1px solid #0002; margin-left: 6px; vertical-align: 2px; }
.badge.success { background: #dff3e4; } .badge.failure { background: #fbdada; }
.badge.other-outcome { background: #eee; }
table { border-collapse: collapse; margin: 4px 0; }
td, th { padding: 1px 10px 1px 0; text-align: left; vertical-align: top; }
th { font-weight: 600; color: #444; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.swatch { display: inline-block; width: 11px; height: 11px; margin-right: 5px;
  vertical-align: -1px; border: 1px solid #0003; }
.legend { display: flex; flex-wrap: wrap; gap: 2px 16px; margin: 6px 0; }
.legend svg { vertical-align: -2px; margin-right: 4px; }
.meter { display: inline-block; height: 9px; background: #4e79a7; vertical-align: 0; }
.scroll { overflow-x: auto; }
svg text { font-size: 11px; fill: #1d1d1f; }
svg .axis { stroke: #999; } svg .grid { stroke: #eee; }
svg .tick { font-size: 10px; fill: #6b6b6b; }
.row { fill: transparent; } .unit:hover .row, .build:hover .row { fill: #0000000d; }
.unit.critical .label { font-weight: 600; }
.unit.failed .label { fill: #c0392b; }
.phase:hover, .unit:hover .bar { filter: brightness(0.9); }
.steptext { fill: #b03a2e; font-size: 11px; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 12px; }
#detail { position: fixed; right: 12px; bottom: 12px; max-width: 46em; white-space: pre-wrap;
  background: #fffffa; border: 1px solid #bbb; border-radius: 4px; padding: 6px 9px;
  box-shadow: 0 2px 8px #0002; font-size: 12px; }
.note { color: #555; max-width: 70em; }
"""

# Fills the detail panel with the hovered item's SVG <title> (textContent: never markup).
SCRIPT = """
(function () {
  "use strict";
  var panel = document.getElementById("detail");
  if (!panel) { return; }
  document.addEventListener("mouseover", function (event) {
    var target = event.target;
    var item = target && target.closest ? target.closest(".unit, .build, .phase, .step") : null;
    var title = item ? item.querySelector("title") : null;
    if (!title) { panel.hidden = true; return; }
    panel.textContent = title.textContent;
    panel.hidden = false;
  });
})();
"""

DEFS = (
    '<svg width="0" height="0" aria-hidden="true" style="position:absolute"><defs>'
    '<pattern id="hatch-queue" width="5" height="5" patternUnits="userSpaceOnUse"'
    ' patternTransform="rotate(45)"><rect width="5" height="5" fill="#fbe7a6"/>'
    '<line x1="0" y1="0" x2="0" y2="5" stroke="#d9a400" stroke-width="2"/></pattern>'
    '<pattern id="hatch-unknown" width="5" height="5" patternUnits="userSpaceOnUse"'
    ' patternTransform="rotate(-45)"><rect width="5" height="5" fill="#f3f3f3"/>'
    '<line x1="0" y1="0" x2="0" y2="5" stroke="#bdbdbd" stroke-width="1.5"/></pattern>'
    '<pattern id="hatch-failed" width="4" height="4" patternUnits="userSpaceOnUse"'
    ' patternTransform="rotate(45)"><rect width="4" height="4" fill="#f5b7b1"/>'
    '<line x1="0" y1="0" x2="0" y2="4" stroke="#c0392b" stroke-width="1.5"/></pattern>'
    "</defs></svg>"
)


def _text(value: object) -> str:
    """value as HTML text or attribute value: every <, >, &, " and ' escaped."""
    return html.escape(str(value), quote=True)


def _num(value: float) -> str:
    """A coordinate, short."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _secs(value: float | None) -> str:
    return "unknown" if value is None else render.seconds(value)


def _page(title: str, body: Sequence[str]) -> str:
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    policy = (
        f"default-src 'none'; script-src 'sha256-{digest}'; "
        "style-src 'unsafe-inline'; img-src data:"
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{policy}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            '<meta name="generator" content="rbd">',
            # No favicon request: the page fetches nothing.
            '<link rel="icon" href="data:,">',
            f"<title>{_text(title)}</title>",
            f"<style>{STYLE}</style></head><body>",
            DEFS,
            *body,
            '<div id="detail" hidden></div>',
            f"<script>{SCRIPT}</script>",
            "</body></html>",
            "",
        ]
    )


def _swatch(fill: str, label: str) -> str:
    return (
        f'<span><svg width="12" height="12"><rect width="12" height="12" fill="{fill}"'
        f' stroke="#0004"/></svg>{_text(label)}</span>'
    )


def _ticks(limit: float, count: int = 8, cover: bool = False) -> tuple[list[float], float]:
    """Round values from 0, about count of them, up to limit (cover: up to the first at or
    past it), and their step."""
    if limit <= 0:
        return [0.0], 1.0
    raw = limit / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * 0.999)
    last = math.ceil(limit / step - 1e-9) if cover else math.floor(limit / step + 1e-9)
    return [i * step for i in range(last + 1)], step


def _tick_text(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:.{decimals}f} s"


def _stack(phases: Mapping[str, Any], wall: float | None) -> list[tuple[str, float]]:
    """The wall time's parts to draw, in PHASE_KEYS order: measured phases (frontend and
    codegen instead of compile where both are measured), then what the measured ones
    leave of the wall time when any phase is null (`unknown`: not measured)."""
    split = phases.get("frontend_s") is not None and phases.get("codegen_s") is not None
    parts: list[tuple[str, float]] = []
    missing = False
    for key in protocol.PHASE_KEYS:
        if (key == "compile_s" and split) or (key in ("frontend_s", "codegen_s") and not split):
            continue
        value = phases.get(key)
        if value is None:
            missing = True
        elif value > 0:
            parts.append((key, float(value)))
    if missing and wall is not None:
        rest = wall - sum(value for _, value in parts)
        if rest > 0.0005:
            parts.append(("unknown", rest))
    return parts


def _phase_style(key: str) -> tuple[str, str]:
    return UNKNOWN if key == "unknown" else PHASES.get(key, (key, "#999999"))


def _unit_name(unit: Unit) -> str:
    name, target = unit["name"], unit["target"]
    return name if target in (name, name.replace("-", "_")) else f"{name}::{target}"


def _unit_kind(unit: Unit) -> str:
    return UNIT_KINDS.get(unit["kind"], unit["kind"])


def _unit_tip(unit: Unit) -> str:
    """A unit's hover text: what it is, when it ran, where its time went, why it ran."""
    lines = [f"{unit['name']} · target {unit['target']} · {_unit_kind(unit)}"]
    start, total = unit.get("start_s"), unit.get("total_s")
    if unit.get("fresh"):
        lines.append("fresh: cargo did not rebuild it")
    if start is not None and total is not None:
        lines.append(
            f"ran {render.seconds(start)} → {render.seconds(start + total)}"
            f" ({render.seconds(total)})"
        )
    elif not unit.get("fresh"):
        lines.append("not timed by cargo")
    ready, queue = unit.get("ready_s"), unit.get("queue_s")
    if ready is not None:
        waited = f", waited {render.seconds(queue)} for a core" if queue else ""
        lines.append(f"ready at {render.seconds(ready)}{waited}")
    measured: Mapping[str, Any] = unit
    split = [
        f"{label} {render.seconds(value)}"
        for key, label in (
            ("frontend_s", "frontend"),
            ("codegen_s", "codegen"),
            ("compile_s", "compile"),
            ("link_s", "link"),
            ("build_script_s", "build script"),
        )
        if (value := measured.get(key)) is not None
        and (key != "compile_s" or measured.get("codegen_s") is None)
    ]
    if split:
        lines.append(" · ".join(split))
    if unit.get("critical_path"):
        on_path = unit.get("path_s")
        lines.append(
            "on the critical path" + (f": {render.seconds(on_path)} of it" if on_path else "")
        )
    if unit.get("failed"):
        lines.append("FAILED")
    if unit.get("dirty_reason"):
        lines.append(f"why: {unit['dirty_reason']}")
    return "\n".join(lines)


def _phase_bar(
    phases: Mapping[str, Any], wall: float | None, width: float, height: int = 22
) -> str:
    """The build's wall time as one stacked bar, width px for the whole wall time."""
    parts = _stack(phases, wall)
    total = max(wall or 0.0, sum(value for _, value in parts)) or 1.0
    x = 0.0
    out = [f'<svg class="phases" width="{_num(width + 2)}" height="{height + 2}">']
    for key, value in parts:
        label, fill = _phase_style(key)
        w = value / total * width
        share = f" ({value / wall:.0%} of the wall time)" if wall else ""
        out.append(
            f'<g class="phase" data-phase="{_text(key)}"><title>'
            f"{_text(label)}: {_text(render.seconds(value))}{_text(share)}</title>"
            f'<rect x="{_num(x + 1)}" y="1" width="{_num(w)}" height="{height}"'
            f' fill="{fill}" stroke="#fff" stroke-width="0.5"/></g>'
        )
        x += w
    out.append("</svg>")
    return "".join(out)


def _phase_table(phases: Mapping[str, Any], wall: float | None) -> str:
    rows = ["<table><tr><th>phase</th><th>seconds</th><th>of the wall time</th></tr>"]
    for key in protocol.PHASE_KEYS:
        label, fill = _phase_style(key)
        if key in ("frontend_s", "codegen_s"):
            label = f"  of it {label}"
        value = phases.get(key)
        share = f"{value / wall:.0%}" if value is not None and wall else ""
        rows.append(
            f'<tr><td><svg width="12" height="12"><rect width="12" height="12" fill="{fill}"'
            f' stroke="#0004"/></svg> {_text(label)}</td>'
            f'<td class="num">{"unknown" if value is None else f"{value:.3f}"}</td>'
            f'<td class="num">{share}</td></tr>'
        )
    rows.append("</table>")
    return "".join(rows)


def _meta(items: Iterable[tuple[str, str]]) -> str:
    cells = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in items)
    return f'<dl class="meta">{cells}</dl>'


def _badge(outcome: str | None) -> str:
    shown = outcome or "unknown"
    css = shown if shown in ("success", "failure") else "other-outcome"
    return f'<span class="badge {css}">{OUTCOME_MARKS.get(shown, "?")} {_text(shown)}</span>'


def _kind_badge(kind: str | None) -> str:
    label, colour = KINDS.get(kind or "", NO_KIND)
    return (
        f'<span class="badge" style="background:{colour}" title="{_text(label)}">'
        f"{_text(kind or 'kind unknown')}</span>"
    )


def _shares(title: str, shares: Sequence[UnitShare]) -> str:
    if not shares:
        return ""
    longest = max(share["seconds"] for share in shares) or 1.0
    rows = [f"<table><tr><th>{_text(title)}</th><th></th><th>seconds</th></tr>"]
    for share in shares:
        own = share["target"] in (share["name"], share["name"].replace("-", "_"))
        shown = share["name"] if own else f"{share['name']}::{share['target']}"
        rows.append(
            f"<tr><td>{_text(shown)} <span class=muted>{_text(share['kind'])}</span></td>"
            f'<td><span class="meter" style="width:{share["seconds"] / longest * 160:.0f}px">'
            f'</span></td><td class="num">{share["seconds"]:.2f}</td></tr>'
        )
    rows.append("</table>")
    return "".join(rows)


def _explain(explain: Explain) -> list[str]:
    """The build's cores: how busy, on what, and what that says."""
    out = ["<h2>Where the cores went</h2>"]
    jobs, ncpu, span = explain.get("jobs"), explain.get("ncpu"), explain.get("span_s")
    busy, saturated = explain.get("busy"), explain.get("saturated_s")
    units_s = explain.get("units_s") or 0.0
    facts = [
        ("job slots", "unknown" if jobs is None else str(jobs)),
        ("cores", "unknown" if ncpu is None else str(ncpu)),
        ("first unit to last", _secs(span)),
        ("slots busy", "unknown" if busy is None else f"{busy:.0%} on average"),
        ("every slot taken", _secs(saturated)),
        ("units' own time", render.seconds(units_s)),
    ]
    for value, label in (
        (explain.get("proc_macro_s") or 0.0, "proc-macro crates"),
        (explain.get("build_script_s") or 0.0, "build scripts"),
    ):
        share = f" ({value / units_s:.0%} of the units' time)" if units_s else ""
        facts.append((label, render.seconds(value) + share))
    out.append(_meta(facts))
    if busy is not None and jobs:
        if busy >= 0.85:
            reading = (
                f"{jobs} job slots busy {busy:.0%} of the time: the build was bound by cores;"
                " more cores, or fewer or lighter dependencies, would shorten it."
            )
        elif busy <= 0.5:
            reading = (
                f"{jobs} job slots busy only {busy:.0%} of the time: the chain of units that"
                " wait for each other (the critical path) set the time, not the cores."
            )
        else:
            reading = ""
        if reading:
            out.append(f'<p class="note">{_text(reading)}</p>')
    out.append('<div class="legend">')
    out.append(_shares("longest units", explain.get("top_units") or []))
    out.append(_shares("longest on the critical path", explain.get("top_path") or []))
    out.append("</div>")
    return out


def _units_chart(units: Sequence[Unit], wall: float | None) -> str:
    """One row per unit, in start order, each a bar from start to end on cargo's clock."""
    ends = [
        (u.get("start_s") or 0.0) + (u.get("total_s") or 0.0)
        for u in units
        if u.get("start_s") is not None
    ]
    span = max([wall or 0.0, *ends]) or 1.0
    ticks, step = _ticks(span)
    top = 22
    bottom = top + len(units) * ROW_H + 4
    # The axis's labels above and below the rows: a long chart is read at both ends.
    height = bottom + 18
    width = LABEL_W + PLOT_W + 50

    def x(t: float) -> float:
        return LABEL_W + t / span * PLOT_W

    out = [f'<svg class="units" width="{width}" height="{height}" role="img">']
    for t in ticks:
        label = _tick_text(t, step)
        out.append(
            f'<line class="grid" x1="{_num(x(t))}" x2="{_num(x(t))}" y1="{top - 4}"'
            f' y2="{bottom}"/><text class="tick" x="{_num(x(t))}" y="{top - 8}"'
            f' text-anchor="middle">{label}</text><text class="tick" x="{_num(x(t))}"'
            f' y="{bottom + 13}" text-anchor="middle">{label}</text>'
        )
    if wall:
        out.append(
            f'<line class="axis" x1="{_num(x(wall))}" x2="{_num(x(wall))}" y1="{top - 4}"'
            f' y2="{bottom}" stroke-dasharray="3 3"><title>cargo exited at'
            f" {_text(render.seconds(wall))}</title></line>"
        )
    order = sorted(
        range(len(units)),
        key=lambda i: (units[i].get("start_s") is None, units[i].get("start_s") or 0.0, i),
    )
    for row, index in enumerate(order):
        unit = units[index]
        y = top + row * ROW_H
        bar_y = y + (ROW_H - BAR_H) / 2
        classes = ["unit"]
        if unit.get("critical_path"):
            classes.append("critical")
        if unit.get("failed"):
            classes.append("failed")
        if unit.get("fresh"):
            classes.append("fresh")
        name = _unit_name(unit)
        shown = name if len(name) <= 34 else name[:33] + "…"
        mark = "◆ " if unit.get("critical_path") else ""
        out.append(
            f'<g class="{" ".join(classes)}" data-unit="{index}" data-name="{_text(unit["name"])}"'
            f' data-kind="{_text(unit["kind"])}"><title>{_text(_unit_tip(unit))}</title>'
            f'<rect class="row" x="0" y="{y}" width="{width}" height="{ROW_H}"/>'
            f'<text class="label" x="{LABEL_W - 8}" y="{y + 12}" text-anchor="end">'
            f'{_text(mark + shown)} <tspan class="kind">{_text(_unit_kind(unit))}</tspan></text>'
        )
        start, total = unit.get("start_s"), unit.get("total_s")
        if start is None or total is None:
            note = "fresh" if unit.get("fresh") else "not timed"
            out.append(f'<text class="muted" x="{LABEL_W + 4}" y="{y + 12}">{note}</text></g>')
            continue
        ready, queue = unit.get("ready_s"), unit.get("queue_s")
        if ready is not None and queue and start > ready:
            out.append(
                f'<rect class="queue" x="{_num(x(ready))}" y="{_num(bar_y)}"'
                f' width="{_num(x(start) - x(ready))}" height="{BAR_H}"'
                ' fill="url(#hatch-queue)"/>'
            )
        failed = bool(unit.get("failed"))
        measured: Mapping[str, Any] = unit
        out.append(
            f'<rect class="bar" x="{_num(x(start))}" y="{_num(bar_y)}"'
            f' width="{_num(max(x(start + total) - x(start), 1.0))}" height="{BAR_H}"'
            f' fill="{"url(#hatch-failed)" if failed else UNIT_COLOUR}"/>'
        )
        if not failed:
            at = start
            for key in _unit_split(unit):
                value = float(measured.get(key) or 0.0)
                if value <= 0:
                    continue
                out.append(
                    f'<rect x="{_num(x(at))}" y="{_num(bar_y)}"'
                    f' width="{_num(x(min(at + value, start + total)) - x(at))}"'
                    f' height="{BAR_H}" fill="{PHASES[key][1]}"/>'
                )
                at += value
        if unit.get("critical_path"):
            on_path = unit.get("path_s") or total
            out.append(
                f'<rect class="path" x="{_num(x(start))}" y="{_num(bar_y + BAR_H)}"'
                f' width="{_num(max(x(start + on_path) - x(start), 1.0))}" height="2.5"'
                ' fill="#111"/>'
                f'<rect x="{_num(x(start))}" y="{_num(bar_y)}"'
                f' width="{_num(max(x(start + total) - x(start), 1.0))}" height="{BAR_H}"'
                ' fill="none" stroke="#111" stroke-width="1.2"/>'
            )
        if failed:
            out.append(
                f'<text x="{_num(x(start + total) + 4)}" y="{y + 12}" fill="#c0392b">'
                "✗ failed</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def _unit_split(unit: Unit) -> list[str]:
    """The unit's measured parts, in the order they ran."""
    if unit["kind"] == "build-script-run":
        return ["build_script_s"]
    if unit.get("frontend_s") is not None and unit.get("codegen_s") is not None:
        return ["frontend_s", "codegen_s", "link_s"]
    return ["compile_s", "link_s"]


def build_page(build: BuildDetail) -> str:
    """One build: its header, phases (as a stacked bar and a table), cores (`explain`),
    units on cargo's clock, conditions, diagnostics."""
    wall = build.get("wall_s")
    units = build.get("units") or []
    phases: Mapping[str, Any] = build.get("phases") or {}
    trigger = build.get("trigger") or []
    title = f"build #{build.get('id')}"
    body = [
        f"<h1>rbd {_text(title)}{_badge(build.get('outcome'))}{_kind_badge(build.get('kind'))}"
        f' <span class="muted">{_text(render.seconds(wall))}</span></h1>',
        _meta(
            [
                ("project", build["project"]),
                ("started", build.get("started_at") or ""),
                ("trigger", ", ".join(trigger) or f"({render.NO_TRIGGER})"),
                ("command", " ".join(build.get("command") or [])),
                (
                    "units",
                    f"{build.get('units_rebuilt')} rebuilt, {build.get('units_fresh')} fresh",
                ),
                ("linker", build.get("linker") or "—"),
                ("errors", f"{build.get('errors')}, warnings {build.get('warnings')}"),
            ]
        ),
        "<h2>Phases</h2>",
        '<p class="note">By the critical-path rule: the parts add up to the wall time;'
        " a phase rbd could not measure is shown as unknown, never as 0.</p>",
        _phase_bar(phases, wall, PLOT_W),
        _phase_table(phases, wall),
    ]
    explain = build.get("explain")
    if explain:
        body += _explain(explain)
    critical = sum(1 for u in units if u.get("critical_path"))
    body += [
        f"<h2>Units ({len(units)})</h2>",
        '<div class="legend">',
        *(
            _swatch(fill, label)
            for key, (label, fill) in PHASES.items()
            if key in ("frontend_s", "codegen_s", "compile_s", "link_s", "build_script_s")
        ),
        _swatch(UNIT_COLOUR, "unit time with no split"),
        _swatch("url(#hatch-queue)", "ready, waiting for a core"),
        _swatch("url(#hatch-failed)", "failed"),
        f"<span>◆ on the critical path ({critical}), underlined for its time on it</span>",
        "</div>",
    ]
    if units:
        body.append(f'<div class="scroll">{_units_chart(units, wall)}</div>')
    else:
        body.append('<p class="muted">cargo ran no unit (or none was recorded).</p>')
    conditions = build.get("conditions")
    if conditions:
        body += [
            "<details><summary>What it ran with</summary>",
            _meta(
                [
                    ("rustc", conditions.get("rustc") or "unknown"),
                    ("cargo", conditions.get("cargo") or "unknown"),
                    ("Cargo.lock", conditions.get("lock_digest") or "none"),
                    ("profile", json.dumps(conditions.get("profile"), ensure_ascii=False)),
                    ("rustflags", conditions.get("rustflags") or "none"),
                    ("tune", str(conditions.get("tune") or "none")),
                    ("settings", json.dumps(conditions.get("settings"), ensure_ascii=False)),
                ]
            ),
            "</details>",
        ]
    text = build.get("diagnostics") or build.get("first_error") or ""
    if text:
        opened = " open" if build.get("outcome") == "failure" else ""
        body.append(
            f"<details{opened}><summary>Compiler messages</summary>"
            f"<pre>{_text(text.rstrip())}</pre></details>"
        )
    return _page(f"rbd {title}: {build['project']}", body)


def _trend_steps(trend: Trend | None) -> list[tuple[int, str]]:
    """The trend's step changes, oldest first, as (the first build at the new level, what
    changed then and how the median edit rebuild moved)."""
    steps = []
    for step in reversed(trend["steps"] if trend else []):
        changes = "; ".join(change["text"] for change in step.get("changes") or [])
        moved = (
            f"edit rebuild median {render.seconds(step.get('before_s'))} →"
            f" {render.seconds(step.get('after_s'))}"
            f" ({step.get('before_builds')} builds before, {step.get('after_builds')} after)"
        )
        cause = changes or "nothing rbd records changed (the code itself, or the machine)"
        steps.append((step["build_id"], f"{cause}; {moved}"))
    return steps


def _clip(text: str, room: int) -> str:
    return text if len(text) <= room else text[: max(room - 1, 0)] + "…"


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _build_tip(build: BuildSummary) -> str:
    trigger = build.get("trigger") or []
    shown = ", ".join(trigger[:3]) + (f" +{len(trigger) - 3}" if len(trigger) > 3 else "")
    phases: Mapping[str, Any] = build.get("phases") or {}
    parts = [
        f"{_phase_style(key)[0]} {render.seconds(value)}"
        for key, value in _stack(phases, build.get("wall_s"))
    ]
    lines = [
        f"#{build.get('id')} · {build.get('outcome') or 'unknown'} · "
        f"{build.get('kind') or 'kind unknown'} · {render.seconds(build.get('wall_s'))}",
        f"started {str(build.get('started_at') or '')[:19].replace('T', ' ')}",
        f"trigger: {shown or render.NO_TRIGGER}",
    ]
    if parts:
        lines.append(" · ".join(parts))
    return "\n".join(lines)


def _history_chart(builds: Sequence[BuildSummary], steps: Sequence[tuple[int, str]]) -> str:
    """Oldest left: one stacked phase bar per build, its kind under it, steps as lines."""
    walls = sorted(w for b in builds if (w := b.get("wall_s")) is not None)
    ceiling = walls[-1] if walls else 1.0
    if len(walls) >= 3:
        p90 = walls[int(0.9 * (len(walls) - 1))]
        if p90 > 0 and ceiling > CLIP_RATIO * p90:
            ceiling = p90 * 1.5
    ticks, step = _ticks(ceiling or 1.0, 5, cover=True)
    ceiling = max(ceiling, ticks[-1]) or 1.0
    left, top = 56, 30
    width = left + max(len(builds), 20) * HBAR_STEP + 20
    base = top + HPLOT_H
    height = base + 48

    def y(seconds: float) -> float:
        return base - min(seconds, ceiling) / ceiling * HPLOT_H

    out = [f'<svg class="history" width="{width}" height="{height}" role="img">']
    for t in ticks:
        out.append(
            f'<line class="grid" x1="{left}" x2="{width - 10}" y1="{_num(y(t))}"'
            f' y2="{_num(y(t))}"/><text class="tick" x="{left - 6}" y="{_num(y(t) + 3)}"'
            f' text-anchor="end">{_tick_text(t, step)}</text>'
        )
    out.append(f'<line class="axis" x1="{left}" x2="{width - 10}" y1="{base}" y2="{base}"/>')
    column = {b.get("id"): i for i, b in enumerate(builds)}
    drawn = sorted((column[step[0]], n) for n, step in enumerate(steps, 1) if step[0] in column)
    for place, (at, number) in enumerate(drawn):
        build_id, text = steps[number - 1]
        sx = left + at * HBAR_STEP - (HBAR_STEP - HBAR_W) / 2
        # The cause beside its line, as far as the next step's line (about 6 px a character).
        following = drawn[place + 1][0] if place + 1 < len(drawn) else len(builds) + 20
        room = min(60, (following - at) * HBAR_STEP // 6 - 3)
        out.append(
            f'<g class="step" data-build="{build_id}"><title>{_text(f"step change {number}")}'
            f" since #{build_id}: {_text(text)}</title>"
            f'<line x1="{_num(sx)}" x2="{_num(sx)}" y1="{top - 18}" y2="{base + 20}"'
            ' stroke="#b03a2e" stroke-width="1.5" stroke-dasharray="4 3"/>'
            f'<text class="steptext" x="{_num(sx + 3)}" y="{top - 8}">{number} '
            f"{_text(_clip(text, room))}</text></g>"
        )
    for i, build in enumerate(builds):
        bx = left + i * HBAR_STEP
        wall = build.get("wall_s")
        outcome = build.get("outcome") or "unknown"
        dimmed = outcome != "success"
        faded = ' opacity="0.45"' if dimmed else ""
        out.append(
            f'<g class="build {_text(outcome)}" data-build="{_text(build.get("id"))}"'
            f' data-kind="{_text(build.get("kind") or "unknown")}"'
            f' data-outcome="{_text(outcome)}"><title>{_text(_build_tip(build))}</title>'
            f'<rect class="row" x="{bx - 2}" y="{top - 20}" width="{HBAR_STEP}"'
            f' height="{height - top + 20}"/>'
        )
        level = 0.0
        for key, value in _stack(build.get("phases") or {}, wall):
            if level >= ceiling:
                break
            fill = _phase_style(key)[1]
            out.append(
                f'<rect x="{bx}" y="{_num(y(level + value))}" width="{HBAR_W}"'
                f' height="{_num(y(level) - y(level + value))}" fill="{fill}"{faded}/>'
            )
            level += value
        if wall is not None and wall > ceiling:
            out.append(
                f'<text class="tick" x="{bx + HBAR_W / 2}" y="{top - 4}" text-anchor="middle">'
                f"↑{_text(f'{wall:.0f}')}</text>"
            )
        if outcome == "failure":
            out.append(
                f'<text x="{bx + HBAR_W / 2}" y="{_num(y(wall or 0.0) - 3)}" text-anchor="middle"'
                ' fill="#c0392b">✗</text>'
            )
        elif dimmed:
            out.append(
                f'<rect x="{bx}" y="{_num(y(wall or 0.0))}" width="{HBAR_W}"'
                f' height="{_num(base - y(wall or 0.0))}" fill="none" stroke="#777"'
                ' stroke-dasharray="2 2"/>'
                f'<text class="tick" x="{bx + HBAR_W / 2}" y="{_num(y(wall or 0.0) - 3)}"'
                f' text-anchor="middle">{OUTCOME_MARKS.get(outcome, "?")}</text>'
            )
        colour = KINDS.get(build.get("kind") or "", NO_KIND)[1]
        out.append(
            f'<rect class="kindmark" x="{bx}" y="{base + 4}" width="{HBAR_W}" height="8"'
            f' fill="{colour}" stroke="#0005" stroke-width="0.5"/>'
        )
        if i % 10 == 0 or i == len(builds) - 1:
            out.append(
                f'<text class="tick" x="{bx + HBAR_W / 2}" y="{base + 26}" text-anchor="middle">'
                f"#{_text(build.get('id'))}</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)


def history_page(
    project: str | None,
    builds: Sequence[BuildSummary],
    trend: Trend | None = None,
) -> str:
    """A project's builds (given newest first, as `history` replies) as stacked phase
    bars, oldest left, each with its kind; the trend's step changes marked with their
    cause when the reply had a trend."""
    oldest_first = list(reversed(builds))
    steps = _trend_steps(trend)
    name = project or "all projects"
    body = [f"<h1>rbd report <span class=muted>{_text(name)}</span></h1>"]
    if not builds:
        body.append("<p>No builds recorded yet.</p>")
        return _page(f"rbd report: {name}", body)
    first, last = oldest_first[0], oldest_first[-1]
    body.append(
        _meta(
            [
                ("builds", f"{len(builds)}, #{first.get('id')} to #{last.get('id')}"),
                (
                    "from",
                    f"{str(first.get('started_at'))[:19].replace('T', ' ')} to "
                    f"{str(last.get('started_at'))[:19].replace('T', ' ')}",
                ),
            ]
        )
    )
    # Like with like: a median across kinds describes none of them.
    rows = ["<table><tr><th>kind</th><th>builds</th><th>succeeded</th><th>median wall</th></tr>"]
    for kind in [*protocol.BUILD_KINDS, None]:
        own = [b for b in builds if b.get("kind") == kind]
        if not own:
            continue
        walls = [
            w for b in own if b.get("outcome") == "success" and (w := b.get("wall_s")) is not None
        ]
        label, colour = KINDS.get(kind or "", NO_KIND)
        rows.append(
            f'<tr><td><span class="swatch" style="background:{colour}"></span>{_text(label)}</td>'
            f'<td class="num">{len(own)}</td><td class="num">{len(walls)}</td>'
            f'<td class="num">{_text(render.seconds(_median(walls)) if walls else "—")}</td></tr>'
        )
    rows.append("</table>")
    body += ["<h2>By kind</h2>", "".join(rows)]
    body += [
        "<h2>Builds, oldest left</h2>",
        '<div class="legend">',
        *(_swatch(fill, label) for key, (label, fill) in PHASES.items() if key != "compile_s"),
        _swatch(PHASES["compile_s"][1], "compile (no frontend/codegen split)"),
        _swatch(UNKNOWN[1], UNKNOWN[0]),
        "</div>",
        '<div class="legend"><span>under each bar, its kind:</span>',
        *(_swatch(colour, label) for label, colour in [*KINDS.values(), NO_KIND]),
        "</div>",
        '<div class="legend"><span>✗ failed; ⊘ cancelled, ⚠ interrupted, ◷ timed out'
        " (pale, dashed outline); ↑N: a bar clipped at the top, N seconds tall</span></div>",
        f'<div class="scroll">{_history_chart(oldest_first, steps)}</div>',
    ]
    if trend is not None:
        body.append("<h2>Edit rebuilds: step changes</h2>")
        walls = trend.get("walls_s") or []
        median = trend.get("median_s")
        headline = (
            f"Median edit rebuild {render.seconds(median)} over the last {len(walls)};"
            if median is not None
            else "No successful edit rebuild yet;"
        )
        searched = trend.get("searched") or 0
        found = f"{len(steps)} step change{'' if len(steps) == 1 else 's'}" if steps else "none"
        body.append(
            f'<p class="note">{_text(headline)} {_text(found)} found in the last'
            f" {searched} edit rebuilds.</p>"
        )
        ids = {b.get("id") for b in builds}
        items = []
        for number, (build_id, text) in enumerate(steps, 1):
            where = f"since #{build_id}"
            if build_id not in ids:
                where += " (before the builds shown)"
            items.append(f"<li value={number}>{_text(where)}: {_text(text)}</li>")
        if items:
            body.append(f"<ol>{''.join(items)}</ol>")
    return _page(f"rbd report: {name}", body)
