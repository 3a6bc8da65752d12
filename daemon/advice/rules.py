"""Tuning suggestions argued from a project's own recorded builds.

Each rule reads the last edit rebuilds (what a save costs: successful builds a change
triggered, of kind `edit` or recorded without a kind by an older rbd; see
Context.incremental) and the toolchain probe (daemon.advice.probe), and fires only
on a measured signal: a share of the median rebuild, a unit rebuilt every time, a
lock wait. What a suggestion is expected to save comes from this project's own
numbers only (schema.Expected):
- "measured": where the change removes a cost rbd measured (a lock wait, a build
  script run), that cost; for a build configuration, a bench of this project
  (evidence.cite replaces the rule's figure with it);
- "estimate": a figure the project's phase times give directly (checking instead of
  building skips codegen and link, whatever they cost);
- "unmeasured": how much of a phase a change removes is not in any recorded build
  (what share of codegen and link is debuginfo, how much faster another linker
  links this binary), so the expected saving is unknown, bounded by the phase times
  the change acts on (`at_most_s`), until `rbd bench` measures it. Factors taken from
  other projects were wrong by 1.8-3.2x on a real one (line-tables-only overestimated,
  split-debuginfo underestimated 2x): rbd no longer borrows them.
Suggestions are ranked by rank: measured savings first, what this machine cannot run
last. Changes are in the form daemon.advice.tune applies; `manual` ones are for the
user to make.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from rbd.contract.schema import Expected, Suggestion
from rbd.daemon.advice.steps import per_save

WINDOW = 20
MIN_BUILDS = 3
# Phase shares below this are not worth a config change.
SHARE = 0.2
# Nor are phases this short: a few milliseconds saved is below what anyone notices.
MIN_PHASE_S = 0.05


@dataclass
class Context:
    # What the probe found (daemon.advice.probe): it grows with what rbd probes.
    env: dict[str, Any]
    # Newest first, finished builds of the project (schema.BuildSummary), and their units
    # (schema.Unit) by build id. Read as mappings: a rule reads only the keys it needs, and
    # tolerates their absence.
    builds: Sequence[Mapping[str, Any]]
    units: Mapping[int, Sequence[Mapping[str, Any]]] = field(default_factory=dict)
    # The workspace root: a profile value's source is a file in it, or elsewhere.
    root: str = ""
    # Each configuration's latest bench measurement (sqlite.BenchMeasurement, from
    # Store.latest_results: per config, mode and cache, the newest bench that measured
    # it, with that bench's baseline row, and `stale`: why it no longer holds, or None),
    # for the rules that argue from what benches measured; most leave it to
    # evidence.cite.
    measurements: Sequence[Mapping[str, Any]] = ()
    # Set when the builds predate the project's latest tune (advisor.since_tune): said
    # in suggest's hint, so no one reads old medians as the tuned project's.
    stale_note: str | None = None

    @property
    def incremental(self) -> list[Mapping[str, Any]]:
        """The edit rebuilds among the builds (what a save costs: steps.per_save). A build
        that rebuilt dependencies, or everything, is other work, and its minutes would
        swamp the median of seconds-long saves."""
        return [b for b in self.builds if per_save(b)]

    @property
    def saves(self) -> list[Mapping[str, Any]]:
        """Every successful build a change triggered, whatever it rebuilt: for the rules
        that look for what recurs across saves (a build script run on every save, flags
        flipping), whose builds rebuild a dependency and so are not edit rebuilds."""
        return [b for b in self.builds if b.get("outcome") == "success" and b.get("trigger")]

    def median(self, key: str) -> float | None:
        """Median over incremental rebuilds of a phase (or of `wall_s`); None if unmeasured."""
        values = [
            v
            for b in self.incremental
            if (v := b.get("wall_s") if key == "wall_s" else (b.get("phases") or {}).get(key))
            is not None
        ]
        return statistics.median(values) if values else None

    @property
    def profile(self) -> dict[str, Any]:
        profile: dict[str, Any] = self.env.get("profile") or {}
        return profile

    @property
    def host(self) -> str:
        return str(self.env.get("host") or "x86_64-unknown-linux-gnu")

    def linkers_seen(self) -> set[str]:
        return {str(b["linker"]) for b in self.incremental if b.get("linker")}


def secs(value: float) -> str:
    return f"{value:.2f} s"


def share_text(ctx: Context, part: str, label: str) -> tuple[float, float, str] | None:
    """(part median, wall median, "link was 58% of ...") or None when not measured."""
    value, wall = ctx.median(part), ctx.median("wall_s")
    if value is None or not wall or value < MIN_PHASE_S:
        return None
    n = len(ctx.incremental)
    text = (
        f"{label} was {value / wall:.0%} of the median edit rebuild over the last "
        f"{n} builds: {secs(value)} of {secs(wall)}"
    )
    return value, wall, text


def suggestion(
    id: str,
    title: str,
    evidence: str,
    change: dict[str, Any],
    saves_s: float | None,
    basis: str,
    tradeoffs: str,
    *,
    needs_nightly: bool = False,
    full_rebuild: bool = False,
    source: str = "estimate",
    runnable: bool = True,
    at_most_s: float | None = None,
) -> Suggestion:
    """saves_s None (with at_most_s, the phase times the change acts on) is an unknown
    saving: source "unmeasured" (schema.Expected)."""
    expected: Expected
    if saves_s is None:
        expected = {"saves_s": None, "source": "unmeasured", "basis": basis}
        expected["at_most_s"] = round(max(0.0, at_most_s or 0.0), 3)
    else:
        expected = {"saves_s": round(max(0.0, saves_s), 3), "source": source, "basis": basis}
    return {
        "id": id,
        "title": title,
        "evidence": evidence,
        "change": change,
        "expected": expected,
        "tradeoffs": tradeoffs,
        "needs_nightly": needs_nightly,
        "full_rebuild": full_rebuild,
        "runnable": runnable,
    }


def worth(expected: Expected) -> float:
    """The seconds a suggestion is ranked by: what it saves, or for an unmeasured one
    the most it can save."""
    saves = expected.get("saves_s")
    return float(saves if saves is not None else expected.get("at_most_s") or 0.0)


def rank(found: list[Suggestion]) -> list[Suggestion]:
    """found, best first: what this machine can run before what it cannot (however large
    the bound, a change that cannot be built here saves nothing today), then measured
    savings (a bench, or a cost rbd measured) before the rest, since a measurement's
    spread is known and the most an unmeasured change can save is not what it saves;
    by seconds (worth) within each group. A suggestion that saves nothing per rebuild
    (sccache's, deps-opt-level's) comes after every one that saves something."""
    return sorted(
        found,
        key=lambda made: (
            made.get("runnable") is False,
            worth(made["expected"]) <= 0,
            made["expected"]["source"] != "measured",
            -worth(made["expected"]),
        ),
    )


def codegen_and_link(ctx: Context) -> tuple[float, str]:
    """(median codegen + link seconds, what they are called). A build whose frontend and
    codegen cargo did not split has only their sum: then it is compile + link, and says
    so."""
    link = ctx.median("link_s") or 0.0
    codegen = ctx.median("codegen_s")
    if codegen is not None:
        return codegen + link, "codegen and link"
    return (ctx.median("compile_s") or 0.0) + link, "compile (frontend + codegen) and link"


def unmeasured(what: str, seconds: float, config: str) -> str:
    """The basis of an unmeasured saving: what bounds it, and how to measure it."""
    return (
        f"bounded by the {what} ({secs(seconds)}); "
        f"`rbd bench --incremental --configs default,{config}` measures it"
    )


def debuginfo_line_tables(ctx: Context) -> Suggestion | None:
    debug = ctx.profile.get("debug", 2)
    if debug != 2 or len(ctx.incremental) < MIN_BUILDS:
        return None
    base, label = codegen_and_link(ctx)
    wall = ctx.median("wall_s") or 0.0
    evidence = (
        f"the dev profile builds full debuginfo (debug = 2); {label} took {secs(base)} of "
        f"the median edit rebuild ({secs(wall)}) over the last {len(ctx.incremental)} builds"
    )
    change = {
        "file": "Cargo.toml",
        "set": [
            {"key": ["profile", "dev", "debug"], "value": "line-tables-only"},
            {"key": ["profile", "debugging", "inherits"], "value": "dev"},
            {"key": ["profile", "debugging", "debug"], "value": True},
        ],
    }
    return suggestion(
        "debuginfo-line-tables",
        "Build with line tables only, keep a full-debuginfo profile for the debugger",
        evidence,
        change,
        None,
        unmeasured(f"{label} of the median edit rebuild", base, "line-tables-only"),
        "a debugger no longer sees local variables or types in dev builds; backtraces keep "
        "file:line. Build `cargo build --profile debugging` when you need the debugger.",
        full_rebuild=True,
        at_most_s=base,
    )


def debuginfo_none(ctx: Context) -> Suggestion | None:
    """No debuginfo at all in dev builds: the furthest step on from line tables, for
    those whose backtraces need function names but not file:line. The bench measures it
    as `no-debuginfo`; which of the two a project should take is its own numbers' call
    (both are suggested; tune applies one: they set the same key)."""
    debug = ctx.profile.get("debug", 2)
    if debug == 0 or len(ctx.incremental) < MIN_BUILDS:
        return None
    base, label = codegen_and_link(ctx)
    wall = ctx.median("wall_s") or 0.0
    change = {
        "file": "Cargo.toml",
        "set": [
            {"key": ["profile", "dev", "debug"], "value": 0},
            {"key": ["profile", "debugging", "inherits"], "value": "dev"},
            {"key": ["profile", "debugging", "debug"], "value": True},
        ],
    }
    return suggestion(
        "debuginfo-none",
        "Build dev code without debuginfo, keep a full-debuginfo profile for the debugger",
        f"the dev profile builds debuginfo (debug = {debug}); {label} took {secs(base)} of "
        f"the median edit rebuild ({secs(wall)}) over the last {len(ctx.incremental)} builds",
        change,
        None,
        unmeasured(f"{label} of the median edit rebuild", base, "no-debuginfo"),
        "backtraces name functions but lose file:line, and a debugger sees nothing; build "
        "`cargo build --profile debugging` when you need either",
        full_rebuild=True,
        at_most_s=base,
    )


def deps_no_debuginfo(ctx: Context) -> Suggestion | None:
    deps = ctx.profile.get("deps_debug", ctx.profile.get("debug", 2))
    found = share_text(ctx, "link_s", "link")
    if deps == 0 or found is None or found[0] / found[1] < SHARE:
        return None
    change = {
        "file": "Cargo.toml",
        "set": [{"key": ["profile", "dev", "package", "*", "debug"], "value": False}],
    }
    return suggestion(
        "deps-no-debuginfo",
        "Drop debuginfo of dependencies: less for the linker to copy on every link",
        found[2] + f"; dependencies are built with debug = {deps}",
        change,
        None,
        f"bounded by the median link ({secs(found[0])}), of which "
        "dependencies' debuginfo is a part no recorded build shows; a bench of "
        "`no-debuginfo` bounds it from above",
        "no stepping into dependency code with a debugger; dependencies rebuild once",
        full_rebuild=True,
        at_most_s=found[0],
    )


def split_debuginfo(ctx: Context) -> Suggestion | None:
    found = share_text(ctx, "link_s", "link")
    profile = ctx.profile
    if (
        found is None
        or found[0] / found[1] < SHARE
        or profile.get("debug", 2) == 0
        or profile.get("split_debuginfo") not in (None, "off")
        or "linux" not in ctx.host
    ):
        return None
    change = {
        "file": "Cargo.toml",
        "set": [{"key": ["profile", "dev", "split-debuginfo"], "value": "unpacked"}],
    }
    return suggestion(
        "split-debuginfo",
        'Keep debuginfo in the object files (split-debuginfo = "unpacked")',
        found[2],
        change,
        None,
        unmeasured("median link", found[0], "split-debuginfo"),
        "debuggers find debuginfo in .dwo files beside the objects; the binary alone is not "
        "debuggable elsewhere",
        full_rebuild=True,
        at_most_s=found[0],
    )


def _linker_change(ctx: Context, flag: str) -> dict[str, Any]:
    return {
        "file": ".cargo/config.toml",
        "rustflags": {"key": ["target", ctx.host, "rustflags"], "add": ["-C", flag]},
    }


def _instead_of_gnu_ld(
    ctx: Context, id: str, name: str, program: str, tradeoffs: str
) -> Suggestion | None:
    """A linker switch, when binaries were linked by GNU ld/gold, link is a real share
    of the rebuild, and the replacement (program) is installed."""
    found = share_text(ctx, "link_s", "link")
    slow = sorted(ctx.linkers_seen() & {"bfd", "gold"})
    if found is None or not slow or found[0] / found[1] < SHARE:
        return None
    if not (ctx.env.get("linkers") or {}).get(program):
        return None
    return suggestion(
        id,
        f"Link with {name} instead of GNU " + "/".join(slow),
        found[2] + f"; the binaries were linked by {', '.join(slow)}",
        _linker_change(ctx, f"link-arg=-fuse-ld={name}"),
        None,
        unmeasured("median link", found[0], name),
        tradeoffs,
        at_most_s=found[0],
    )


def linker_lld(ctx: Context) -> Suggestion | None:
    return _instead_of_gnu_ld(
        ctx,
        "linker-lld",
        "lld",
        "ld.lld",
        "none for debug builds",
    )


def linker_mold(ctx: Context) -> Suggestion | None:
    return _instead_of_gnu_ld(
        ctx,
        "linker-mold",
        "mold",
        "mold",
        "mold is Linux-only; the config applies to this host triple only",
    )


def cranelift(ctx: Context) -> Suggestion | None:
    label = "codegen"
    found = share_text(ctx, "codegen_s", label)
    if found is None:
        label = "compile (frontend + codegen)"
        found = share_text(ctx, "compile_s", label)
    # Only for a rebuild where codegen is worth a nightly toolchain.
    if found is None or found[0] < 0.1 or found[0] / found[1] < 0.4 or "x86_64" not in ctx.host:
        return None
    nightly = ctx.env.get("nightly") or {}
    ready = bool(nightly.get("toolchain") and nightly.get("cranelift"))
    how = (
        f"build with `cargo +{nightly['toolchain']} build --profile cranelift -Zcodegen-backend`"
        if ready
        else "cannot run on this machine: "
        + ("no nightly toolchain" if not nightly.get("toolchain") else "no cranelift component")
        + "; install it first: `rustup toolchain install nightly && rustup component add "
        "rustc-codegen-cranelift-preview --toolchain nightly`"
    )
    change = {
        "file": ".cargo/config.toml",
        "set": [
            {"key": ["profile", "cranelift", "inherits"], "value": "dev"},
            {"key": ["profile", "cranelift", "codegen-backend"], "value": "cranelift"},
        ],
    }
    return suggestion(
        "cranelift",
        "Generate dev code with cranelift (a profile of its own; stable builds unchanged)",
        found[2] + "; " + how,
        change,
        None,
        unmeasured(f"{label} of the median edit rebuild", found[0], "cranelift"),
        "nightly only; slower generated code; some crates miss LLVM intrinsics",
        needs_nightly=True,
        full_rebuild=True,
        runnable=ready,
        at_most_s=found[0],
    )


def codegen_units_default(ctx: Context) -> Suggestion | None:
    units = ctx.profile.get("codegen_units")
    if units is None or units >= 256 or not ctx.incremental:
        return None
    codegen, label = ctx.median("codegen_s"), "codegen"
    if codegen is None:
        codegen, label = ctx.median("compile_s") or 0.0, "compile (frontend + codegen)"
    return suggestion(
        "codegen-units-default",
        "Restore the default codegen-units (256) for dev builds",
        f"the dev profile sets codegen-units = {units}; codegen parallelism and incremental "
        f"reuse suffer; median {label} {secs(codegen)}",
        _profile_edit(ctx, "codegen_units", {"remove": [["profile", "dev", "codegen-units"]]}),
        None,
        f"bounded by the median {label} ({secs(codegen)}); "
        "no rbd bench configuration changes codegen-units: compare edit rebuilds before and "
        "after the tune (rbd history --changes)",
        "slightly slower generated code (debug builds rarely care)",
        full_rebuild=True,
        at_most_s=codegen,
    )


def incremental_on(ctx: Context) -> Suggestion | None:
    if ctx.profile.get("incremental", True) or not ctx.incremental:
        return None
    compile_s = ctx.median("compile_s") or 0.0
    return suggestion(
        "incremental-on",
        "Turn incremental compilation back on",
        f"the dev profile sets incremental = false; every rebuild compiles the edited crate "
        f"from scratch (median compile {secs(compile_s)})",
        # build.incremental overrides every profile: both go.
        _profile_edit(
            ctx,
            "incremental",
            {"remove": [["profile", "dev", "incremental"], ["build", "incremental"]]},
        ),
        None,
        f"bounded by the median compile ({secs(compile_s)}); "
        "compare edit rebuilds before and after the tune (rbd history --changes)",
        "more disk use in target/",
        full_rebuild=True,
        at_most_s=compile_s,
    )


def _profile_edit(ctx: Context, key: str, edit: dict[str, Any]) -> dict[str, Any]:
    """edit, aimed where the profile value came from (the probe's "sources"): the
    project's Cargo.toml or .cargo/config.toml. A value from the environment or a
    file outside the project is for the user to change where it is set; a set
    into the project's own .cargo/config.toml overrides a farther file."""
    source = str((ctx.profile.get("sources") or {}).get(key) or "default")
    root = Path(ctx.root)
    if source in ("default", str(root / "Cargo.toml")):
        return {"file": "Cargo.toml", **edit}
    if source == str(root / ".cargo" / "config.toml") or (
        "/" in source and "set" in edit and not (root / ".cargo" / "config").exists()
    ):
        return {"file": ".cargo/config.toml", **edit}
    if "/" not in source:
        return {"file": "environment", "manual": f"unset {source} where rbd start runs"}
    keys = edit.get("remove") or [entry["key"] for entry in edit.get("set", [])]
    dotted = ", ".join(".".join(k) for k in keys)
    return {"file": source, "manual": f"change {dotted} there"}


def rust_analyzer_target_dir(ctx: Context) -> Suggestion | None:
    waits = [
        (b.get("phases") or {}).get("lock_wait_s") or 0.0 for b in ctx.builds if b.get("outcome")
    ]
    waited = [w for w in waits if w >= 0.1]
    if len(waited) < 2:
        return None
    return suggestion(
        "rust-analyzer-target-dir",
        "Give rust-analyzer its own target dir",
        f"{len(waited)} of the last {len(waits)} builds waited for another cargo's lock on the "
        f"build directory, {secs(sum(waited))} in all (median {secs(statistics.median(waited))})",
        {
            "file": ".vscode/settings.json",
            "manual": 'set "rust-analyzer.cargo.targetDir": true (or your editor\'s equivalent)',
        },
        statistics.median(waited) * len(waited) / max(1, len(waits)),
        "the lock waits measured here, averaged over the builds considered",
        "rust-analyzer builds dependencies once more into its own directory (disk space)",
        source="measured",
    )


def _units_by_name(
    ctx: Context, kind: str, builds: Sequence[Mapping[str, Any]] | None = None
) -> dict[str, list[Mapping[str, Any]]]:
    found: dict[str, list[Mapping[str, Any]]] = {}
    for build in ctx.incremental if builds is None else builds:
        for unit in ctx.units.get(int(build["id"]), []):
            if unit.get("kind") == kind:
                found.setdefault(str(unit["name"]), []).append(unit)
    return found


def rerun_if_changed(ctx: Context) -> Suggestion | None:
    n = len(ctx.saves)
    best: tuple[float, str, int] | None = None
    for name, runs in _units_by_name(ctx, "build-script-run", ctx.saves).items():
        if n >= MIN_BUILDS and len(runs) * 2 >= n:
            cost = statistics.median(u.get("build_script_s") or 0.0 for u in runs)
            if best is None or cost > best[0]:
                best = (cost, name, len(runs))
    if best is None:
        return None
    cost, name, count = best
    return suggestion(
        "rerun-if-changed",
        f"Stop {name}'s build script from running on every rebuild",
        f"its build script ran in {count} of the last {n} rebuilds a save triggered,"
        f" {secs(cost)} each (median)",
        {
            "file": f"build.rs of {name}",
            "manual": 'print "cargo::rerun-if-changed=PATH" for exactly the inputs it reads',
        },
        cost,
        "the script's median run time, measured here",
        "none, if the listed inputs are complete",
        source="measured",
    )


MISMATCH_WORDS = ("RUSTFLAGS", "rustflags", "features", "profile", "config settings", "env var")


def flags_mismatch(ctx: Context) -> Suggestion | None:
    hits: dict[str, list[Mapping[str, Any]]] = {}
    for build in ctx.saves:
        for unit in ctx.units.get(int(build["id"]), []):
            reason = str(unit.get("dirty_reason") or "")
            if any(word in reason for word in MISMATCH_WORDS):
                hits.setdefault(str(build["id"]), []).append(unit)
    if len(hits) < 2:
        return None
    per_build = [sum(u.get("total_s") or 0.0 for u in units) for units in hits.values()]
    example = next(iter(hits.values()))[0]
    return suggestion(
        "flags-mismatch",
        "Another tool builds with different flags: each switch rebuilds everything",
        f"in {len(hits)} of the last {len(ctx.saves)} rebuilds cargo rebuilt units because "
        f"flags changed (e.g. {example['name']}: {example.get('dirty_reason')}), median "
        f"{secs(statistics.median(per_build))} of unit time",
        {
            "file": ".cargo/config.toml",
            "manual": "give every tool the same RUSTFLAGS/features, or rust-analyzer its own "
            "target dir",
        },
        statistics.median(per_build) * len(hits) / max(1, len(ctx.saves)),
        "the time of the units rebuilt for flag changes, measured here",
        "none",
        source="measured",
    )


def split_crate(ctx: Context) -> Suggestion | None:
    wall = ctx.median("wall_s")
    if not wall or len(ctx.incremental) < MIN_BUILDS:
        return None
    for name, units in _units_by_name(ctx, "lib").items():
        fronts = [u["frontend_s"] for u in units if u.get("frontend_s") and u.get("critical_path")]
        if len(fronts) * 2 >= len(ctx.incremental) and statistics.median(fronts) >= 0.4 * wall:
            front = statistics.median(fronts)
            return suggestion(
                "split-crate",
                f"Split {name}: its frontend alone is much of every rebuild",
                f"{name}'s frontend (parsing, type and borrow checking) took {secs(front)} of the "
                f"median {secs(wall)} rebuild, on the critical path in {len(fronts)} builds",
                {"file": f"{name}/Cargo.toml", "manual": "move rarely edited modules to a crate"},
                None,
                f"bounded by {name}'s median frontend ({secs(front)}), of which the "
                "modules moved out are the part saved",
                "more crates to maintain; cross-crate inlining needs #[inline]",
                at_most_s=front,
            )
    return None


def measured(
    ctx: Context, config: str, mode: str, cache: str | None = None
) -> Mapping[str, Any] | None:
    """The latest measurement of config in mode (and cache), whichever bench made it."""
    for found in ctx.measurements:
        row = found.get("result") or {}
        if (row.get("config"), row.get("mode"), row.get("cache")) == (config, mode, cache):
            return found
    return None


def _count(stats: Sequence[Mapping[str, Any]], key: str) -> int:
    return sum(int(s.get(key) or 0) for s in stats)


def sccache(ctx: Context) -> Suggestion | None:
    """sccache caches what rustc compiles without incremental compilation: dependencies
    (clean builds, Cargo.lock updates), never the workspace crates an edit rebuilds,
    which cargo compiles incrementally. Two findings, from two measurements: with
    RUSTC_WRAPPER=sccache, edit rebuilds whose recorded counts (daemon.build.sccache)
    show no hit pay its per-call cost for nothing; without it, a bench whose warm-cache
    clean build beat the baseline by more than the runs' spread says what it would save
    where dependencies are compiled afresh."""
    wrapper = str(ctx.env.get("rustc_wrapper") or "")
    # The latest cold and warm measurements, whichever benches made them (a later bench
    # of other configurations does not hide them), and the warm one's own baseline.
    cold_at, warm_at = (
        measured(ctx, "sccache", "clean", "cold"),
        measured(ctx, "sccache", "clean", "warm"),
    )
    cold = None if cold_at is None else cold_at["result"]
    warm = None if warm_at is None else warm_at["result"]
    base = None if warm_at is None else warm_at.get("base")
    bench = warm_at or {}
    # A stale measurement (advisor marks it: freshness.stale) is cited as stale.
    stale = f"; stale: {bench['stale']}" if bench.get("stale") else ""
    cited = (
        f"rbd bench #{bench.get('bench_id', '?')} ({str(bench.get('bench_at') or '')[:10]}{stale})"
    )
    if PurePath(wrapper).name.startswith("sccache"):
        if not ctx.incremental:
            return None
        counted = [b["sccache"] for b in ctx.incremental if b.get("sccache")]
        if counted and _count(counted, "hits"):
            return None  # edit rebuilds here do get hits: sccache earns its cost
        median = secs(ctx.median("wall_s") or 0)
        if counted:
            found = (
                f"the last {len(counted)} edit rebuilds (median {median}) made "
                f"{_count(counted, 'compile_requests')} calls through it and got no hit "
                f"({_count(counted, 'not_cacheable')} not cacheable, "
                f"{_count(counted, 'misses')} missed): an edit rebuilds workspace crates, "
                "compiled incrementally, which sccache does not cache"
            )
        else:
            found = (
                "sccache cannot cache incrementally compiled workspace crates, which is all "
                f"an edit rebuilds (median rebuild {median})"
            )
        tradeoffs = "clean builds of dependencies are no longer shared through the cache"
        if cold and warm:
            tradeoffs += (
                f" ({cited}: a clean build took {secs(float(warm['median_s']))} from a warm "
                f"cache, {secs(float(cold['median_s']))} from an empty one)"
            )
        return suggestion(
            "sccache",
            "Leave sccache out of the edit-rebuild loop",
            f"RUSTC_WRAPPER is {wrapper}; {found}",
            {
                "file": "environment",
                "manual": "start rbd with RUSTC_WRAPPER= (keep sccache for CI)",
            },
            min(ctx.median("overhead_s") or 0.0, 0.05),
            "sccache's per-invocation cost, at most 50 ms",
            tradeoffs,
            source="measured" if counted else "estimate",
        )
    if not (cold and warm and base):
        return None
    gain = float(base["median_s"]) - float(warm["median_s"])
    spread = max(float(base.get("stddev_s") or 0.0), float(warm.get("stddev_s") or 0.0))
    if gain <= spread:
        return None
    edit_at = measured(ctx, "sccache", "incremental")
    edit = None if edit_at is None else edit_at["result"]
    edit_base = None if edit_at is None else edit_at.get("base")
    on_edits = ""
    if edit and edit_base:
        cost = float(edit["median_s"]) - float(edit_base["median_s"])
        on_edits = f"; an edit rebuild took {cost * 1000:+.0f} ms with it (nothing to cache)"
    return suggestion(
        "sccache",
        "Use sccache where dependencies are compiled afresh, not in the edit loop",
        f"{cited}: a clean build took {secs(float(warm['median_s']))} with a warm sccache "
        f"({secs(float(cold['median_s']))} from an empty cache) against "
        f"{secs(float(base['median_s']))} without{on_edits}",
        {
            "file": "environment",
            "manual": "RUSTC_WRAPPER=sccache for CI, fresh checkouts and dependency updates, "
            "with a shared cache for a team (README: For teams)",
        },
        0.0,
        f"no effect on an edit rebuild; a clean or dependency build saves {secs(gain)} "
        f"(measured over {bench.get('runs')} runs)",
        "sccache's per-call cost on every rustc call; a cache to keep (local disk or shared)",
        source="estimate" if stale else "measured",
    )


def cargo_check_loop(ctx: Context) -> Suggestion | None:
    recent = [b for b in ctx.builds if b.get("outcome") in ("success", "failure")]
    failed = [b for b in recent if b.get("outcome") == "failure" and b.get("errors")]
    if len(recent) < 5 or len(failed) * 10 < len(recent) * 4:
        return None
    saved, label = codegen_and_link(ctx)
    split, share = ctx.median("codegen_s"), len(failed) / len(recent)
    return suggestion(
        "cargo-check-loop",
        "Check instead of build while you fix errors",
        f"{len(failed)} of the last {len(recent)} builds failed with compile errors; checking "
        f"skips codegen and link ({label}: {secs(saved)} of the median successful rebuild)",
        {"file": "rbd.toml", "manual": 'command = "check" (and back to "build" to run it)'},
        None if split is None else saved * share,
        f"the median {label} of a successful rebuild, for the share of builds that fail"
        if split is not None
        else f"bounded by the median {label} ({secs(saved)}) for the share of builds "
        "that fail; cargo did not split the frontend, which checking keeps, from codegen",
        "no binary to run until you switch back",
        at_most_s=saved * share,
    )


def deps_opt_level(ctx: Context) -> Suggestion | None:
    level = ctx.profile.get("deps_opt_level", 0)
    if not isinstance(level, int) or level < 2:
        return None
    # Builds that rebuilt dependencies (a start, an update): by kind when it is known,
    # else (recorded by an older rbd) those that rebuilt many units.
    heavy = [
        b
        for b in ctx.builds
        if b.get("wall_s")
        and (
            b.get("kind") in ("deps", "full")
            if b.get("kind") is not None
            else (b.get("units_rebuilt") or 0) >= 10
        )
    ]
    if not heavy:
        return None
    worst = max(heavy, key=lambda b: float(b["wall_s"]))
    return suggestion(
        "deps-opt-level",
        f"Optimize dependencies at opt-level 1, not {level}",
        f"dependencies are built at opt-level {level}; build #{worst['id']} rebuilt "
        f"{worst['units_rebuilt']} units in {secs(float(worst['wall_s']))}",
        _profile_edit(
            ctx,
            "deps_opt_level",
            {"set": [{"key": ["profile", "dev", "package", "*", "opt-level"], "value": 1}]},
        ),
        0.0,
        "no effect on an edit's rebuild; dependency rebuilds (updates, clean builds) get faster",
        "dependency code runs somewhat slower in dev builds",
        full_rebuild=True,
    )


# A server start at least this long, and this share of save -> serving, is a finding.
SLOW_START_S = 0.2
SLOW_START_SHARE = 0.25


def _restarts(ctx: Context) -> list[Mapping[str, Any]]:
    """Run mode's measured restarts after incremental rebuilds (a build summary's `app`)."""
    return [
        app
        for b in ctx.incremental
        if (app := b.get("app")) and not app.get("error") and app.get("ready_s") is not None
    ]


def app_start(ctx: Context) -> Suggestion | None:
    restarts = _restarts(ctx)
    if len(restarts) < MIN_BUILDS:
        return None
    start = statistics.median(float(a["ready_s"]) for a in restarts)
    serving = [float(a["serving_s"]) for a in restarts if a.get("serving_s") is not None]
    whole = statistics.median(serving) if serving else None
    if start < SLOW_START_S or (whole and start < SLOW_START_SHARE * whole):
        return None
    of_whole = f" of the median {secs(whole)} from save to serving" if whole else ""
    return suggestion(
        "app-start",
        "Make your server start faster: it is part of every save",
        f"your server took a median {secs(start)} from its start to answering over the last "
        f"{len(restarts)} restarts{of_whole}",
        {
            "file": "src/main.rs",
            "manual": "defer what the first request does not need (migrations, cache warm-up, "
            "eager connection pools) until after the listener accepts, or do it once in dev",
        },
        None,
        f"bounded by the measured start ({secs(start)}), of which the work deferred "
        "is the part saved",
        "the first request may be slower; startup errors surface later",
        at_most_s=start,
    )


def listen_handover(ctx: Context) -> Suggestion | None:
    restarts = [app for b in ctx.incremental if (app := b.get("app")) and not app.get("handover")]
    if len(restarts) < MIN_BUILDS:
        return None
    down = [
        float(a.get("stop_s") or 0.0) + float(a["ready_s"])
        for a in restarts
        if a.get("ready_s") is not None
    ]
    downtime = f"; it was down a median {secs(statistics.median(down))} per save" if down else ""
    return suggestion(
        "listen-handover",
        "Let rbd hold the port: no refused request while the server restarts",
        f"run mode restarted your server {len(restarts)} times without `listen`, so its port "
        f"closed each time{downtime}",
        {
            "file": "rbd.toml",
            "manual": 'listen = ["127.0.0.1:PORT"], and take the socket with the listenfd crate '
            "(README, Run mode)",
        },
        0.0,
        "no time per save; refused connections (and a browser's failed reload) go away",
        "a few lines in main.rs to take the socket (listenfd falls back to binding)",
    )


WILD_INSTALL = "cargo install --locked wild-linker (with a rustc older than 1.99: --version 0.10.0)"


def linker_wild(ctx: Context) -> Suggestion | None:
    """Link with wild, when link is a real share of the median edit rebuild and the
    binaries are not wild's already. Fires whether wild is installed or not: without it
    the suggestion says it cannot run here and how to install it. The change: gcc 12
    cannot name wild (-fuse-ld=wild needs GCC 16), so with clang installed it is wild's
    documented `linker = "clang"` + `--ld-path`, which tune applies; with gcc alone it is
    a `-B` directory holding `ld` -> wild, which the user makes (rbd's own, in its cache,
    is not a path to write into a project's config)."""
    found = share_text(ctx, "link_s", "link")
    if found is None or found[0] / found[1] < SHARE or "-linux-" not in ctx.host:
        return None
    seen = ctx.linkers_seen()
    if seen == {"wild"}:
        return None
    linkers = ctx.env.get("linkers") or {}
    wild, clang = linkers.get("wild"), linkers.get("clang")
    evidence = found[2]
    if seen:
        evidence += f"; the binaries were linked by {', '.join(sorted(seen))}"
    if not wild:
        evidence += f"; cannot run on this machine: wild is not installed ({WILD_INSTALL})"
    change: dict[str, Any]
    if clang:
        change = {
            "file": ".cargo/config.toml",
            "set": [{"key": ["target", ctx.host, "linker"], "value": "clang"}],
            "rustflags": {
                "key": ["target", ctx.host, "rustflags"],
                "add": ["-C", f"link-arg=--ld-path={wild or 'wild'}"],
            },
        }
    else:
        lld_off = '"-C", "linker-features=-lld", ' if ctx.host == "x86_64-unknown-linux-gnu" else ""
        change = {
            "file": ".cargo/config.toml",
            "manual": f"mkdir -p ~/.local/lib/wild-ld && ln -sf {wild or '$(command -v wild)'} "
            f'~/.local/lib/wild-ld/ld; then add {lld_off}"-C", '
            f'"link-arg=-B<your home>/.local/lib/wild-ld" to [target.{ctx.host}] rustflags, '
            "the home written out (gcc before 16 has no -fuse-ld=wild; with clang: linker = "
            '"clang" and "-C", "link-arg=--ld-path=wild")',
        }
    return suggestion(
        "linker-wild",
        "Link with wild" + (f" instead of {'/'.join(sorted(seen))}" if seen else ""),
        evidence,
        change,
        None,
        unmeasured("median link", found[0], "wild"),
        "wild is young (0.x) and Linux-only; keep it to dev builds",
        runnable=bool(wild),
        at_most_s=found[0],
    )


def _frontend_s(ctx: Context, build: Mapping[str, Any]) -> float | None:
    """A rebuild's frontend on the critical path: the phase when cargo split every unit on
    it, else the sum over the path's units it split (libraries; cargo reports no split
    for a binary, whose frontend is then left out); None when no unit on it was split."""
    phase = (build.get("phases") or {}).get("frontend_s")
    if phase is not None:
        return float(phase)
    fronts = [
        float(unit["frontend_s"])
        for unit in ctx.units.get(int(build["id"]), [])
        if unit.get("critical_path") and unit.get("frontend_s") is not None
    ]
    return sum(fronts) if fronts else None


def parallel_frontend(ctx: Context) -> Suggestion | None:
    """Run the frontend on every core (nightly `-Zthreads=<cores>`), when the frontend of
    the rebuilt crates on the critical path (_frontend_s) is a real share of the median
    edit rebuild, in at least half of the edit rebuilds. At most the part of it the cores
    could share out: frontend x (1 - 1/cores). Needs a nightly; without one it says so
    and cannot run here. The change stays manual: rbd never moves the user's builds to
    nightly by itself."""
    cores = int(ctx.env.get("cores") or 0)
    wall = ctx.median("wall_s")
    edits = ctx.incremental
    fronts = [f for b in edits if (f := _frontend_s(ctx, b)) is not None]
    if cores < 2 or not wall or not fronts or len(fronts) * 2 < len(edits):
        return None
    front = statistics.median(fronts)
    if front < MIN_PHASE_S or front / wall < SHARE:
        return None
    if any("threads=" in str(flag) for flag in ctx.env.get("rustflags") or []):
        return None
    found = (
        front,
        wall,
        f"the frontend (parsing, type and borrow checking) of the crates rebuilt on the "
        f"critical path was {front / wall:.0%} of the median edit rebuild over the last "
        f"{len(edits)} builds: {secs(front)} of {secs(wall)}",
    )
    toolchain = (ctx.env.get("nightly") or {}).get("toolchain")
    evidence = found[2] + (
        f"; the nightly toolchain {toolchain} can build with -Zthreads={cores}"
        if toolchain
        else "; cannot run on this machine: no nightly toolchain (rustup toolchain install nightly)"
    )
    bound = found[0] * (1 - 1 / cores)
    return suggestion(
        "parallel-frontend",
        f"Run the compiler's frontend on {cores} threads (nightly -Zthreads)",
        evidence,
        {
            "file": "environment",
            "manual": f'build with RUSTFLAGS="-Zthreads={cores}" cargo +{toolchain or "nightly"} '
            "build (RUSTFLAGS replaces the rustflags of config files: add yours to it); "
            "your stable builds stay as they are",
        },
        None,
        unmeasured(
            f"part of the median frontend ({secs(found[0])}) {cores} threads could share out",
            bound,
            "parallel-frontend",
        ),
        "nightly only, and the whole project rebuilds once with it; an unstable flag",
        needs_nightly=True,
        full_rebuild=True,
        runnable=bool(toolchain),
        at_most_s=bound,
    )


RULES: tuple[Callable[[Context], Suggestion | None], ...] = (
    debuginfo_line_tables,
    debuginfo_none,
    deps_no_debuginfo,
    split_debuginfo,
    linker_lld,
    linker_mold,
    linker_wild,
    cranelift,
    parallel_frontend,
    deps_opt_level,
    codegen_units_default,
    incremental_on,
    rust_analyzer_target_dir,
    rerun_if_changed,
    flags_mismatch,
    split_crate,
    sccache,
    cargo_check_loop,
    app_start,
    listen_handover,
)


def suggest(ctx: Context) -> tuple[list[Suggestion], str | None]:
    """(suggestions ranked (rank), a hint when data is short)."""
    found = rank([made for rule in RULES if (made := rule(ctx)) is not None])
    hint = None
    if len(ctx.incremental) < MIN_BUILDS:
        hint = (
            f"{len(ctx.incremental)} incremental rebuild(s) recorded; most rules need "
            f"{MIN_BUILDS}. Save a file in the project a few times (rbd rebuilds on every "
            "save), then ask again."
        )
    if ctx.stale_note:
        hint = ctx.stale_note if hint is None else f"{hint} Also, {ctx.stale_note}"
    return found, hint
