"""Human-readable output of the client's commands (`--json` bypasses all of this)."""

from __future__ import annotations

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


MARKS = {"success": "✓", "failure": "✗", "cancelled": "⊘", "interrupted": "⚠", "timeout": "⏱"}


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.2f} s"
    return f"{value / 60:.1f} min"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def duration(value: float) -> str:
    value = int(value)
    days, rest = divmod(value, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"


def build_line(build: dict[str, Any], with_project: bool = True) -> str:
    """One line per build: mark, wall time, outcome details, units, trigger."""
    outcome = build.get("outcome") or "?"
    parts = [f"{MARKS.get(outcome, '?')} {seconds(build.get('wall_s')):>8}"]
    if with_project:
        parts.append(build["project"].rstrip("/").rsplit("/", 1)[-1])
    if outcome == "failure":
        errors = plural(build.get("errors") or 0, "error")
        parts.append(f"failed: {errors}, {plural(build.get('warnings') or 0, 'warning')}")
    elif outcome != "success":
        parts.append(outcome)
    elif build.get("warnings"):
        parts.append(plural(build["warnings"], "warning"))
    rebuilt, fresh = build.get("units_rebuilt"), build.get("units_fresh")
    if rebuilt is not None:
        parts.append(f"({rebuilt} rebuilt, {fresh} fresh)")
    trigger = build.get("trigger") or []
    if trigger:
        more = f" +{len(trigger) - 2}" if len(trigger) > 2 else ""
        parts.append("← " + ", ".join(trigger[:2]) + more)
    elif build.get("id") is not None:
        parts.append("← start")
    return "  ".join(parts)


def status(data: dict[str, Any]) -> str:
    daemon = data["daemon"]
    lines = [
        f"rbd daemon {daemon['version']} (protocol {daemon['protocol']}), "
        f"pid {daemon['pid']}, up {duration(daemon['uptime_s'])}",
        f"  socket  {daemon['socket']}",
        f"  log     {daemon['log']}",
        f"  store   {daemon['store']}",
    ]
    if daemon.get("store_error"):
        lines.append(f"  store error: {daemon['store_error']}")
    if not data["projects"]:
        lines.append("no watched projects (`rbd start` in a Cargo project)")
    for project in data["projects"]:
        lines.append("")
        lines.append(f"{project['root']}  [{project['state']}]")
        lines.append(f"  command  {' '.join(project['command'])}")
        current = project.get("current")
        if current:
            progress = current.get("progress") or {}
            total = progress.get("total")
            counted = f"{progress.get('done', 0)}/{total} units" if total else "starting"
            active = ", ".join(progress.get("active") or [])
            lines.append(
                f"  building #{current['build_id']}: {counted}, "
                f"{seconds(progress.get('elapsed_s'))}" + (f"  ({active})" if active else "")
            )
        last = project.get("last_build")
        lines.append("  last     " + (build_line(last, with_project=False) if last else "none yet"))
        if project.get("problem"):
            lines.append(f"  problem  {project['problem']}")
        env = project.get("env") or {}
        shown = {k: v for k, v in env.items() if k != "PATH"}
        if shown:
            lines.append("  env      " + " ".join(f"{k}={v}" for k, v in shown.items()))
        if "PATH" in env:
            lines.append(f"  PATH     {env['PATH']}")
    return "\n".join(lines)


def history(builds: list[dict[str, Any]]) -> str:
    if not builds:
        return "no builds recorded yet"
    header = (
        f"{'id':>6}  {'started':19}  {'outcome':11} {'wall':>9}  {'err':>3} {'warn':>4}  trigger"
    )
    lines = [header]
    for b in builds:
        trigger = b.get("trigger") or []
        shown = ", ".join(trigger[:2]) + (f" +{len(trigger) - 2}" if len(trigger) > 2 else "")
        lines.append(
            f"{b['id']:>6}  {b['started_at'][:19].replace('T', ' '):19}  "
            f"{MARKS.get(b['outcome'], '?')} {b['outcome']:11} "
            f"{seconds(b.get('wall_s')):>9}  {b.get('errors') or 0:>3} {b.get('warnings') or 0:>4}"
            f"  {shown or '(start)'}"
        )
    return "\n".join(lines)


def show(build: dict[str, Any]) -> str:
    lines = [
        f"build #{build['id']}  {build['outcome']}  {seconds(build.get('wall_s'))}",
        f"  project   {build['project']}",
        f"  started   {build['started_at']}",
        f"  command   {' '.join(build['command'])}",
        f"  trigger   {', '.join(build['trigger']) or '(start)'}",
        f"  settle    {seconds(build.get('settle_s'))}",
        f"  units     {build.get('units_rebuilt')} rebuilt, {build.get('units_fresh')} fresh",
        f"  linker    {build.get('linker') or '—'}",
        f"  errors    {build.get('errors')}, warnings {build.get('warnings')}",
    ]
    phases = build.get("phases") or {}
    lines.append(
        "  phases    "
        + "  ".join(f"{k.removesuffix('_s')} {seconds(v)}" for k, v in phases.items())
        + "  (— = not measured)"
    )
    units = build.get("units") or []
    if units:
        lines.append("")
        lines.append(f"  {'unit':30} {'kind':12} {'starts at':>10} {'took':>9}")
        for unit in units:
            name = (
                unit["name"]
                if unit["target"] == unit["name"]
                else f"{unit['name']}::{unit['target']}"
            )
            lines.append(
                f"  {name[:30]:30} {unit['kind'][:12]:12} {seconds(unit.get('start_s')):>10} "
                f"{seconds(unit.get('total_s')):>9}"
            )
    if build.get("diagnostics"):
        lines.append("")
        lines.append(build["diagnostics"].rstrip())
    elif build.get("first_error"):
        lines.append("")
        lines.append(build["first_error"])
    return "\n".join(lines)


def progress_line(project: str, event: dict[str, Any]) -> str:
    name = project.rstrip("/").rsplit("/", 1)[-1]
    total = event.get("total")
    counted = f"{event.get('done', 0)}/{total}" if total else "…"
    active = ", ".join(event.get("active") or [])
    return f"⟳ {name}  {counted}  {seconds(event.get('elapsed_s'))}  {active}"[:160]
