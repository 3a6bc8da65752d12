"""Human-readable output of the client's commands (`--json` bypasses all of this)."""

from __future__ import annotations

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from rbd.contract.schema import (
        AppRun,
        AppStatus,
        BenchStatus,
        BuildDetail,
        BuildSummary,
        Explain,
        Phases,
        SccacheStats,
        StatusReply,
        Step,
        Trend,
        UnitShare,
    )


MARKS = {"success": "✓", "failure": "✗", "cancelled": "⊘", "interrupted": "⚠", "timeout": "⏱"}
# What a build no change triggered is shown with: `rbd start`'s first, or `rbd build`.
NO_TRIGGER = "start/build"


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


def build_line(build: BuildSummary, with_project: bool = True, cause: str | None = None) -> str:
    """One line per build: mark, wall time, outcome details, units, trigger.

    A build with no changed path (trigger `[]`) was `rbd start`'s first or one `rbd build`
    asked for; the store does not tell which, so it is labelled for both unless the
    caller knows its cause."""
    outcome = build.get("outcome") or "?"
    parts = [f"{MARKS.get(outcome, '?')} {seconds(build.get('wall_s')):>8}"]
    if with_project:
        parts.append(build["project"].rstrip("/").rsplit("/", 1)[-1])
    if outcome == "failure":
        errors = plural(build.get("errors") or 0, "error")
        parts.append(f"failed: {errors}, {plural(build.get('warnings') or 0, 'warning')}")
    elif outcome != "success":
        parts.append(outcome)
    elif warnings := build.get("warnings"):
        parts.append(plural(warnings, "warning"))
    split = phase_split(build.get("phases") or {})
    if split and outcome == "success":
        parts.append(split)
    rebuilt, fresh = build.get("units_rebuilt"), build.get("units_fresh")
    if rebuilt is not None:
        kind = build.get("kind")
        parts.append(f"({rebuilt} rebuilt, {fresh} fresh{f'; {kind}' if kind else ''})")
    if build.get("linker"):
        parts.append(f"linker: {build['linker']}")
    trigger = build.get("trigger") or []
    if trigger:
        more = f" +{len(trigger) - 2}" if len(trigger) > 2 else ""
        parts.append("← " + ", ".join(trigger[:2]) + more)
    elif cause is not None:
        parts.append(f"← {cause}")
    elif build.get("id") is not None:
        parts.append(f"← {NO_TRIGGER}")
    return "  ".join(parts)


def app_line(app: AppRun) -> str:
    """Run mode's restart in one line: what took how long, save -> serving first."""
    name = app.get("bin") or "app"
    if app.get("error"):
        return f"  ↻ {name}: {app['error']}"
    parts = []
    if app.get("serving_s") is not None:
        parts.append(f"save → serving {seconds(app['serving_s'])}")
    if app.get("stop_s") is not None:
        parts.append(f"old stopped in {seconds(app['stop_s'])}")
    if app.get("ready_s") is not None:
        parts.append(f"ready in {seconds(app['ready_s'])}")
    elif app.get("ready_by") is None:
        parts.append("readiness unknown (no listen, ready_url or ready_pattern)")
    handover = "socket kept open" if app.get("handover") else "port closed while restarting"
    return f"  ↻ {name} (pid {app.get('pid')}): " + ", ".join(parts) + f"; {handover}"


def app_state(app: AppStatus) -> list[str]:
    """The app lines of a project in `rbd status`."""
    state = app["state"]
    head = f"  app      {app.get('bin') or '?'}: {state}"
    if app.get("pid") and state in ("starting", "ready", "running"):
        head += f", pid {app['pid']}"
    if app.get("build_id") is not None:
        head += f", from build #{app['build_id']}"
    if app.get("since"):
        head += f", since {str(app['since'])[11:19]}"
    if app.get("listen"):
        head += f"; listening on {', '.join(app['listen'])} (held by rbd)"
    lines = [head]
    if app.get("error"):
        lines.append(f"           {app['error']}")
    for text in (app.get("last_lines") or [])[-5:]:
        lines.append(f"           | {text}")
    lines.append(f"           output: `rbd logs --app` ({app['log']})")
    return lines


def bench_state(bench: BenchStatus) -> str:
    """The bench line of a project in `rbd status`: what it builds now, how far it is."""
    done = f"{bench.get('done', 0)}/{bench.get('total') or '?'} builds"
    elapsed = duration(bench.get("elapsed_s") or 0.0)
    if bench.get("idle"):
        # An idle bench (auto_bench): the project's builds go on; a save stops it.
        measures = ", ".join(bench.get("configs") or []) or "?"
        now = f"{bench.get('mode')} {bench['config']}" if bench.get("config") else "preparing"
        return f"  bench    idle, measuring {measures} (stops at a save): {now}; {done}, {elapsed}"
    if not bench.get("config"):
        return f"  bench    preparing (copy of the sources, the project's build); {elapsed}"
    config = str(bench["config"]) + (f" ({bench['cache']})" if bench.get("cache") else "")
    run = bench.get("run")
    if run == "priming":
        which = "priming build"
    else:
        which = f"{'run' if run == 'counted' else run} {bench.get('number')} of {bench.get('of')}"
    return f"  bench    {bench.get('mode')} {config}: {which}; {done}, {elapsed}"


def phase_split(phases: Phases) -> str:
    """`frontend 0.22 · codegen 0.41 · …`: measured phases only, in seconds."""
    if phases.get("compile_s") is None:
        return ""
    shown = []
    if phases.get("frontend_s") is not None and phases.get("codegen_s") is not None:
        shown += [("frontend", phases["frontend_s"]), ("codegen", phases["codegen_s"])]
    else:
        shown.append(("compile", phases["compile_s"]))
    for value, label in (
        (phases.get("queue_s"), "waiting for a core"),
        (phases.get("link_s"), "link"),
        (phases.get("build_script_s"), "build scripts"),
        (phases.get("lock_wait_s"), "lock wait"),
        (phases.get("overhead_s"), "cargo"),
        (phases.get("other_s"), "other"),
    ):
        if value:
            shown.append((label, value))
    return " · ".join(f"{label} {value:.2f}" for label, value in shown)


PHASE_NOTES = {
    "overhead_s": "cargo's own time before its first unit and after its last (startup,"
    " fingerprinting, its report)",
    "queue_s": "units on the critical path ready, waiting for a job slot (every core busy)",
    "lock_wait_s": "waiting for another cargo's lock on the build directory",
    "compile_s": "compile time (frontend + codegen) of the units on the critical path",
    "frontend_s": "  of it frontend (parsing, type checking, borrow checking)",
    "codegen_s": "  of it codegen (LLVM)",
    "link_s": "time in the linker, as rbd's linker shim measured it",
    "build_script_s": "build scripts run on the critical path",
    "other_s": "the rest: gaps where cargo ran no unit between units, its 10 ms rounding",
}


def status(data: StatusReply) -> str:
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
    if daemon.get("unsaved_builds") or daemon.get("lost_builds"):
        lines.append(
            f"  {daemon.get('unsaved_builds', 0)} builds wait in memory for the store"
            f" ({daemon.get('lost_builds', 0)} lost)"
        )
    if not data["projects"]:
        lines.append("no watched projects (`rbd start` in a Cargo project)")
    for project in data["projects"]:
        lines.append("")
        lines.append(f"{project['root']}  [{project['state']}]")
        lines.append(f"  command  {' '.join(project['command'])}")
        build_config = (project.get("config") or {}).get("build_config", "default")
        if project.get("artifacts"):
            lines.append(f"  config   {build_config}; binaries in {project['artifacts']}")
        current = project.get("current")
        if current:
            progress: Mapping[str, Any] = current.get("progress") or {}
            total = progress.get("total")
            counted = f"{progress.get('done', 0)}/{total} units" if total else "starting"
            active = ", ".join(progress.get("active") or [])
            lines.append(
                f"  building #{current['build_id']}: {counted}, "
                f"{seconds(progress.get('elapsed_s'))}" + (f"  ({active})" if active else "")
            )
        if bench := project.get("bench"):
            lines.append(bench_state(bench))
        last = project.get("last_build")
        lines.append("  last     " + (build_line(last, with_project=False) if last else "none yet"))
        if app := project.get("app"):
            lines += app_state(app)
        if project.get("problem"):
            lines.append(f"  problem  {project['problem']}")
        env = project.get("env") or {}
        shown = {k: v for k, v in env.items() if k != "PATH"}
        if shown:
            lines.append("  env      " + " ".join(f"{k}={v}" for k, v in shown.items()))
        if "PATH" in env:
            lines.append(f"  PATH     {env['PATH']}")
    return "\n".join(lines)


SPARKS = "▁▂▃▄▅▆▇█"


def trend(data: Trend, label: str = "", steps: int = 3) -> list[str]:
    """The median edit rebuild over the project's latest ones (the daemon's fixed window,
    whatever --limit), its sparkline oldest to newest, then the newest step changes."""
    walls = data["walls_s"]
    if len(walls) < 2:
        return []
    low, high = min(walls), max(walls)
    spark = "".join(
        SPARKS[0 if high == low else round((w - low) / (high - low) * (len(SPARKS) - 1))]
        for w in walls
    )
    unknown = data["unknown_kind"]
    older = f"  ({unknown} of them recorded by an older rbd, kind unknown)" if unknown else ""
    lines = [
        f"{label}edit rebuilds: median {seconds(data['median_s'])} over {len(walls)}  {spark}"
        + older
    ]
    lines += [f"{label}{step_line(step)}" for step in data["steps"][:steps]]
    return lines


def step_causes(step: Step) -> list[str]:
    """What changed at a step, one line each."""
    return [change["text"] for change in step["changes"]] or [
        "nothing rbd records changed (the code itself, or the machine)"
    ]


def step_line(step: Step) -> str:
    """since #412: Cargo.lock changed — `sqlx-macros` added; edit rebuild median 0.61 s → 1.85 s"""
    return (
        f"since #{step['build_id']}: {'; '.join(step_causes(step))}; edit rebuild median "
        f"{seconds(step['before_s'])} → {seconds(step['after_s'])}"
    )


def changes(trends: dict[str, Trend]) -> str:
    """`rbd history --changes`: each project's step changes, newest first, with causes."""
    if not trends:
        return "no builds recorded yet"
    lines: list[str] = []
    for root, data in trends.items():
        if len(trends) > 1:
            lines += ["", root] if lines else [root]
        lines += trend(data, steps=0)
        searched = plural(data["searched"], "edit rebuild")
        if not data["steps"]:
            lines.append(f"no step change in the last {searched}")
            continue
        lines.append(f"step changes in the last {searched}, newest first:")
        for step in data["steps"]:
            when = step["started_at"][:16].replace("T", " ")
            lines.append(
                f"  since #{step['build_id']} ({when}): edit rebuild median "
                f"{seconds(step['before_s'])} → {seconds(step['after_s'])} "
                f"({step['before_builds']} builds before, {step['after_builds']} after;"
                f" the last before: #{step['before_id']})"
            )
            lines += [f"    {cause}" for cause in step_causes(step)]
    return "\n".join(lines)


def short_names(roots: list[str]) -> dict[str, str]:
    """Each project root's last path component, or as many last components as tell it
    apart from the other roots listed."""
    parts = {root: root.rstrip("/").split("/") for root in roots}
    names = {}
    for root, own in parts.items():
        depth = 1
        while depth < len(own) and any(
            other != root and theirs[-depth:] == own[-depth:] for other, theirs in parts.items()
        ):
            depth += 1
        names[root] = "/".join(own[-depth:])
    return names


# The project column of a history of several projects: wide enough for most crate names.
PROJECT_COLUMN_MAX = 20


def history(builds: list[BuildSummary], trends: dict[str, Trend] | None = None) -> str:
    """A table of builds, newest first, each with its kind, after each project's trend
    (the median edit rebuild and the newest step changes; `trends` is the history
    reply's); when they are of several projects, with a project column and a trend per
    project."""
    if not builds:
        return "no builds recorded yet"
    roots = list(dict.fromkeys(b["project"] for b in builds))
    names = short_names(roots) if len(roots) > 1 else {}
    width = min(PROJECT_COLUMN_MAX, max(len(n) for n in ["project", *names.values()]))
    trends = trends or {}
    lines: list[str] = []
    for root in roots:
        if root in trends:
            lines += trend(trends[root], f"{names[root]}: " if names else "")
    project = f"{'project':{width}}  " if names else ""
    # Run mode: save -> serving (the new server answering), when any build has it.
    serving = any(b.get("app") for b in builds)
    # sccache's hits of its cacheable calls, when any build has them.
    cached = any(b.get("sccache") for b in builds)
    header = (
        f"{'id':>6}  {'started':19}  {project}{'outcome':13} {'kind':4} {'wall':>9} {'compile':>7}"
        f" {'front':>6} {'codegen':>7} {'link':>6} {'other':>6}"
        + (f" {'serving':>9}" if serving else "")
        + (f" {'sccache':>7}" if cached else "")
        + f"  {'err':>3} {'warn':>4}  trigger"
    )
    lines += [""] if lines else []
    lines.append(header)
    for b in builds:
        p = b.get("phases") or {}
        trigger = b.get("trigger") or []
        shown = ", ".join(trigger[:2]) + (f" +{len(trigger) - 2}" if len(trigger) > 2 else "")
        project = f"{names[b['project']][:width]:{width}}  " if names else ""
        lines.append(
            f"{b['id']:>6}  {b['started_at'][:19].replace('T', ' '):19}  {project}"
            f"{MARKS.get(b['outcome'] or '', '?')} {b['outcome']:11} {b.get('kind') or '–':4} "
            f"{seconds(b.get('wall_s')):>9} {_short(p.get('compile_s')):>7} "
            f"{_short(p.get('frontend_s'))} "
            f"{_short(p.get('codegen_s')):>7}"
            f" {_short(p.get('link_s'))} {_short(p.get('other_s'))}"
            + (f" {_serving(b.get('app')):>9}" if serving else "")
            + (f" {_hits(b.get('sccache')):>7}" if cached else "")
            + f"  {b.get('errors') or 0:>3} {b.get('warnings') or 0:>4}"
            f"  {shown or f'({NO_TRIGGER})'}"
        )
    return "\n".join(lines)


def show(build: BuildDetail) -> str:
    kind = f"  {build['kind']} build" if build.get("kind") else ""
    units = build.get("units") or []
    failed = sum(1 for unit in units if unit.get("failed"))
    lines = [
        f"build #{build['id']}  {build['outcome']}{kind}  {seconds(build.get('wall_s'))}",
        f"  project   {build['project']}",
        f"  started   {build['started_at']}",
        f"  command   {' '.join(build['command'])}",
        f"  trigger   {', '.join(build['trigger']) or f'({NO_TRIGGER})'}",
        f"  settle    {seconds(build.get('settle_s'))}",
        f"  units     {build.get('units_rebuilt')} rebuilt"
        + (f" ({failed} failed)" if failed else "")
        + f", {build.get('units_fresh')} fresh",
        f"  linker    {build.get('linker') or '—'}",
        f"  errors    {build.get('errors')}, warnings {build.get('warnings')}",
    ]
    if build.get("rustc_wrapper"):
        lines.append(f"  wrapper   {build['rustc_wrapper']} (your RUSTC_WRAPPER, run by rbd's)")
    if stats := build.get("sccache"):
        lines.append(f"  sccache   {sccache_line(stats)}")
    if app := build.get("app"):
        lines.append(
            f"  app       {app.get('bin')} pid {app.get('pid')}: stop {seconds(app.get('stop_s'))}"
            f" (replaced exit {app.get('replaced_exit')}), ready {seconds(app.get('ready_s'))}"
            f" by {app.get('ready_by') or 'unknown'},"
            f" save → serving {seconds(app.get('serving_s'))}"
        )
        if app.get("error"):
            lines.append(f"            {app['error']}")
    phases = build.get("phases") or {}
    lines += ["", "  phase          seconds   (critical-path rule: parts add up to the wall time)"]
    for key, note in PHASE_NOTES.items():
        value = phases.get(key)
        shown = "unknown" if value is None else f"{value:.3f}"
        lines.append(f"  {key.removesuffix('_s'):13} {shown:>8}   {note}")
    if explain := build.get("explain"):
        lines += ["", *explanation(explain, phases, build.get("wall_s"))]
    if units:
        lines.append("")
        lines.append(
            f"    {'unit':28} {'kind':16} {'start':>7} {'queued':>7} {'total':>7} {'compile':>7}"
            f" {'front':>7} {'codegen':>7} {'link':>7} {'script':>7}  why rebuilt"
        )
        for unit in units:
            name = (
                unit["name"]
                if unit["target"] in (unit["name"], unit["name"].replace("-", "_"))
                else f"{unit['name']}::{unit['target']}"
            )
            mark = "✗" if unit.get("failed") else "*" if unit.get("critical_path") else " "
            lines.append(
                f"  {mark} {name[:28]:28} {unit['kind'][:16]:16} {_num(unit.get('start_s'))} "
                f"{_num(unit.get('queue_s'))} "
                f"{_num(unit.get('total_s'))} {_num(unit.get('compile_s'))} "
                f"{_num(unit.get('frontend_s'))} {_num(unit.get('codegen_s'))} "
                f"{_num(unit.get('link_s'))} {_num(unit.get('build_script_s'))}"
                f"  {_reason(unit.get('dirty_reason'))}"
            )
        lines.append(
            "  * on the critical path; ✗ failed; queued: ready, waiting for a job slot;"
            " – not measured or not applicable (cargo gives binaries no frontend/codegen"
            " split; only some units link)"
        )
    if build.get("diagnostics"):
        lines.append("")
        lines.append(build["diagnostics"].rstrip())
    elif first_error := build.get("first_error"):
        lines.append("")
        lines.append(first_error)
    return "\n".join(lines)


# Above this share of the job slots in use, with most of the path queued, the build was
# bound by cores, not by its dependency chain.
CPU_BOUND_BUSY = 0.8


def explanation(explain: Explain, phases: Phases, wall: float | None) -> list[str]:
    """Where the cores went: how busy, on what, and what would help (`rbd show`)."""
    lines = []
    jobs, busy, span = explain.get("jobs"), explain.get("busy"), explain.get("span_s")
    if jobs and busy is not None and span:
        cores = f" ({explain['ncpu']} cores)" if explain.get("ncpu") else ""
        lines.append(
            f"  cores     {jobs} job slots{cores} busy {busy:.0%} of the {span:.2f} s units ran;"
            f" every slot taken {seconds(explain.get('saturated_s'))}"
        )
        queue = phases.get("queue_s") or 0.0
        if busy >= CPU_BOUND_BUSY and wall and queue >= wall / 3:
            lines.append(
                f"            CPU-bound: the path waited {queue:.2f} s for a core; more cores,"
                " or fewer or lighter dependencies, would help"
            )
        elif wall and (phases.get("compile_s") or 0.0) >= wall / 2:
            lines.append(
                "            bound by the chain of units on the critical path: faster or"
                " smaller crates on it would help"
            )
    total = explain.get("units_s") or 0.0
    if total:
        macros, scripts = explain.get("proc_macro_s") or 0.0, explain.get("build_script_s") or 0.0
        lines.append(
            f"  unit time {total:.2f} s in all: proc-macros {macros:.2f} s ({macros / total:.0%}),"
            f" build scripts {scripts:.2f} s ({scripts / total:.0%})"
        )

    def listed(shares: list[UnitShare]) -> str:
        return ", ".join(f"{s['name']} {s['seconds']:.2f}" for s in shares)

    if explain.get("top_units"):
        lines.append(f"  longest   {listed(explain['top_units'])}")
    if explain.get("top_path"):
        lines.append(f"  on path   {listed(explain['top_path'])}")
    return lines


def sccache_line(stats: SccacheStats) -> str:
    """12 hits, 3 misses (80%), 5 not cacheable (incremental 4, crate-type 1); Local disk"""
    hits, misses = stats.get("hits"), stats.get("misses")
    if hits is not None and misses is not None:
        text = f"{plural(hits, 'hit')}, {misses} {'miss' if misses == 1 else 'misses'}"
    else:
        text = "hits and misses unknown"
    if stats.get("hit_rate") is not None:
        text += f" ({stats['hit_rate']:.0%})"
    if stats.get("not_cacheable"):
        # sccache's "-" is rustc reading stdin: cargo's probes of the compiler.
        reasons = ", ".join(
            f"{'stdin' if k == '-' else k} {v}" for k, v in (stats.get("reasons") or {}).items()
        )
        text += f", {stats['not_cacheable']} not cacheable" + (f" ({reasons})" if reasons else "")
    if stats.get("errors"):
        text += f", {plural(stats['errors'] or 0, 'cache error')}"
    return text + (f"; {stats['location']}" if stats.get("location") else "")


def _hits(stats: SccacheStats | None) -> str:
    # Hits of the cacheable calls: "3/4"; "–" when none was cacheable or not known.
    if not stats or stats.get("hits") is None or stats.get("misses") is None:
        return "–"
    hits, misses = stats["hits"] or 0, stats["misses"] or 0
    return f"{hits}/{hits + misses}" if hits + misses else "–"


def _serving(app: AppRun | None) -> str:
    if not app:
        return "–"
    if app.get("error"):
        return "failed"
    return seconds(app.get("serving_s")) if app.get("serving_s") is not None else "–"


def _reason(text: str | None) -> str:
    # cargo's "has changed (1795307048.55s, 8s after last build at 1795307040.57s)":
    # the raw mtimes say nothing a person reads; --json keeps them.
    text = text or ""
    at = text.find(" (")
    if at >= 0 and text.endswith("s)") and "after last build" in text[at:]:
        return text[:at]
    return text


def _short(value: float | None) -> str:
    return f"{'–':>6}" if value is None else f"{value:6.2f}"


def _num(value: float | None) -> str:
    return f"{'–':>7}" if value is None else f"{value:7.2f}"


def progress_line(project: str, event: dict[str, Any]) -> str:
    name = project.rstrip("/").rsplit("/", 1)[-1]
    total = event.get("total")
    counted = f"{event.get('done', 0)}/{total}" if total else "…"
    active = ", ".join(event.get("active") or [])
    return f"⟳ {name}  {counted}  {seconds(event.get('elapsed_s'))}  {active}"[:160]


def suggestions(data: Mapping[str, Any]) -> str:
    """data: a SuggestReply, with what the daemon left out null."""
    env = data.get("environment") or {}
    profile = env.get("profile") or {}
    linkers = ", ".join(k for k, v in (env.get("linkers") or {}).items() if v) or "none found"
    nightly = env.get("nightly") or {}
    bench, hint = data.get("bench"), data.get("hint")
    lines = [
        f"{data['project']}",
        f"  toolchain  cargo {env.get('cargo_version')}, rustc {env.get('rustc_version')} "
        f"({env.get('channel')}), {env.get('host')}",
        f"  links with {_linker(env)}",
        f"  linkers    {linkers}; nightly: {nightly.get('toolchain') or 'none'}"
        + (" with cranelift" if nightly.get("cranelift") else ""),
        f"  dev        debug={profile.get('debug')} deps debug={profile.get('deps_debug')} "
        f"opt-level={profile.get('opt_level')} deps opt-level={profile.get('deps_opt_level')} "
        f"codegen-units={profile.get('codegen_units')} incremental={profile.get('incremental')}",
        f"  evidence   {data.get('builds_considered', 0)} incremental rebuilds"
        + (f"; rbd bench #{bench['id']}" if bench else "; no rbd bench yet"),
    ]
    if hint:
        lines += ["", hint]
    found = data.get("suggestions") or []
    if not found and not hint:
        lines += ["", "nothing to suggest: no rule found a cost worth a change in these builds"]
    for n, item in enumerate(found, 1):
        expected = item["expected"]
        flags = []
        if item.get("needs_nightly"):
            flags.append("needs nightly")
        if item.get("full_rebuild"):
            flags.append("next build is a full rebuild")
        change = item["change"]
        lines += [
            "",
            f"{n}. {item['id']}: {item['title']}",
            f"   why       {item['evidence']}",
            f"   saves     {_saves(expected)} per rebuild "
            f"({expected['source']}: {expected.get('basis', '')})",
            f"   change    {change['file']}: {_change_text(change)}",
            f"   costs     {item['tradeoffs']}" + (f" [{'; '.join(flags)}]" if flags else ""),
        ]
        if "manual" not in change:
            lines.append(f"   apply     rbd tune apply {item['id']}")
    for gone in data.get("withdrawn") or []:
        lines += ["", f"not suggested: {gone['id']}: {gone['reason']}"]
    return "\n".join(lines)


def _linker(env: Mapping[str, Any]) -> str:
    """The linker the configuration asks for, and the one the recent builds' binaries
    name (what really linked them); an older daemon's reply has the default only."""
    asked = env.get("linker_in_effect") or f"{env.get('default_linker')} (rustc's default)"
    seen = env.get("linked_by")
    if not seen:
        return str(asked)
    return f"{asked}; the last builds' binaries were linked by {', '.join(seen)}"


def _saves(expected: Mapping[str, Any]) -> str:
    """An unmeasured saving is unknown, with its bound; never a number rbd made up."""
    if expected.get("saves_s") is None:
        bound = expected.get("at_most_s")
        return "unknown" + ("" if bound is None else f", at most {seconds(bound)}")
    return f"~{seconds(expected['saves_s'])}"


def _change_text(change: dict[str, Any]) -> str:
    if "manual" in change:
        return f"{change['manual']} (by hand)"
    parts = [
        f"{'.'.join(_key(k) for k in item['key'])} = {json_value(item['value'])}"
        for item in change.get("set") or []
    ]
    parts += [f"remove {'.'.join(_key(k) for k in key)}" for key in change.get("remove") or []]
    flags = change.get("rustflags")
    if flags:
        parts.append(f"{'.'.join(_key(k) for k in flags['key'])} += {' '.join(flags['add'])}")
    return "; ".join(parts)


def _key(part: str) -> str:
    return part if part.replace("-", "").replace("_", "").isalnum() else f'"{part}"'


def json_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f'"{value}"' if isinstance(value, str) else str(value)


def tune(action: str, reply: dict[str, Any]) -> str:
    if action == "revert":
        files, ids = ", ".join(reply["files"]), ", ".join(reply["suggestions"])
        return f"rbd: reverted tune #{reply['tune_id']} ({ids}): {files}"
    lines = [f["diff"].rstrip() for f in reply["files"]]
    if not reply["files"]:
        lines.append("rbd: nothing to change: the configuration already says so")
    elif reply["dry_run"]:
        lines.append("rbd: dry run: nothing written")
    else:
        lines.append(
            f"rbd: applied {', '.join(reply['applied'])} as tune #{reply['tune_id']}"
            f" (undo: rbd tune revert {reply['tune_id']})"
        )
        if reply.get("full_rebuild"):
            lines.append("rbd: the next build rebuilds everything once")
    return "\n".join(lines)
