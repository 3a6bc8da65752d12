"""Figure 11 — every second of a build accounted for: what rbd's phases leave unexplained
(`other_s / wall_s`) on full and dependency builds, where edit rebuilds never had much.

A private daemon (its own XDG dirs) watches each project and records its builds as it
always does; nothing here times anything itself. Per build: its phases by the
critical-path rule (daemon/build/timings.py), each as a share of `wall_s`, the queue
included; how far the additive parts (overhead, queue, compile, link, build scripts,
lock wait, other) sum from the wall time; the build's `kind`, and `explain.busy` (the
average share of cargo's job slots in use). Goal: `other_s ≤ 10%` of wall on every build
measured, so the verdict is on the worst run, not the median.

Cases, in this order in each run (runs repeat the whole sequence: interleaved):

- webapp clean: a copy of benchmarks/webapp without target/, `rbd start` → its first
  build (crates.io's packages come from the local registry cache);
- webapp profile: then `[profile.dev] debug = "line-tables-only"` appended to its
  Cargo.toml (every target unit rebuilds; build scripts and proc-macros, built for the
  host, stay fresh);
- webapp bump: then `cargo update -p serde_json --precise 1.0.151` (serde_json and what
  depends on it rebuild: a dependency build);
- synth 10 / 50 / 200: a synthetic workspace of that many crates (benchmarks/synth.py),
  `rbd start` → its first build.

    .venv/bin/python benchmarks/accounting.py [--runs 3] [--only webapp,synth200] \\
        [--dump DIR] [--quick] [--write]

`--dump DIR` writes each measured build's `rbd show --json` detail there (to find where
a remainder comes from). `--quick` runs a 3-crate workspace through the same steps once
(its "bump" is a version bump of the workspace's own crates, no registry): a smoke test.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import synth  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Row,
    count_builds,
    private_daemon,
    remove_shared_cache,
    report,
)
from rbd.daemon.build import timings  # noqa: E402
from rbd.daemon.build.records import BuildResult  # noqa: E402
from rbd.daemon.build.report import cargo_version as parse_cargo_version  # noqa: E402
from rbd.daemon.build.report import parse  # noqa: E402
from tests.conftest import Events, Rbd  # noqa: E402

WEBAPP = ROOT / "benchmarks" / "webapp"
GOAL = 0.10
RUNS = 3
SIZES = (10, 50, 200)
BUILD_S = 1800.0
# After a measured build, the daemon must stay idle this long (a build the change's own
# follow-up writes started would otherwise run into the next case).
QUIET_S = 1.5
QUICK_QUIET_S = 0.3
# How long a change gets to start a build (the settle is 20 ms) before `rbd build` asks.
NUDGE_S = 5.0
PROFILE_CHANGE = '\n[profile.dev]\ndebug = "line-tables-only"\n'
BUMP = ("serde_json", "1.0.151")
# The parts that add up to the wall time (frontend and codegen are parts of compile).
PARTS = (
    ("overhead_s", "overhead"),
    ("queue_s", "queue"),
    ("compile_s", "compile"),
    ("link_s", "link"),
    ("build_script_s", "build scripts"),
    ("lock_wait_s", "lock wait"),
    ("other_s", "other"),
)
WEBAPP_CASES = ("webapp clean", "webapp profile", "webapp bump")


@dataclass
class Case:
    """One case's builds over the runs: build_finished's summary and show's detail each."""

    name: str
    summaries: list[dict[str, Any]] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    # Builds the daemon ran after the measured one before it was idle (should be none).
    followers: int = 0
    # Runs whose change started no build within NUDGE_S, built with `rbd build` instead.
    nudged: int = 0
    # Seconds the daemon's analysis of each build's report takes (see analysis_s).
    analysis: list[float] = field(default_factory=list)


def share(build: dict[str, Any], key: str) -> float | None:
    value, wall = build["phases"].get(key), build.get("wall_s")
    return None if value is None or not wall else float(value) / float(wall)


def parts_sum(build: dict[str, Any]) -> float:
    """The additive parts' sum over the wall time (1.0: they add up exactly)."""
    total = sum(float(build["phases"].get(key) or 0.0) for key, _ in PARTS)
    return total / float(build["wall_s"])


def settled_build(events: Events, timeout: float, quiet_s: float) -> tuple[dict[str, Any], int]:
    """The next build that ran to its end (one a newer change cancelled is replaced by
    that change's build), and how many more started before the daemon was idle."""
    while True:
        build = events.finished(timeout=timeout)
        if build["outcome"] != "cancelled":
            break
    after = count_builds(events, quiet_s, timeout)
    return build, after.started


class Recorder:
    """Runs changes against a watched project and files the builds they cause by case."""

    def __init__(
        self, rbd: Rbd, cases: dict[str, Case], run: int, dump: Path | None, quiet_s: float
    ) -> None:
        self.rbd, self.cases, self.run, self.dump = rbd, cases, run, dump
        self.quiet_s = quiet_s

    def measure(
        self,
        case: str,
        events: Events,
        project: Path,
        change: Callable[[], None],
        nudge: bool = False,
    ) -> None:
        """change, then the build it caused in project; with nudge, `rbd build` if the
        change started none within NUDGE_S."""
        entry = self.cases.setdefault(case, Case(case))
        change()
        if nudge:
            try:
                events.started(timeout=NUDGE_S)
            except AssertionError:
                entry.nudged += 1
                print(f"  {case}: no build started within {NUDGE_S:g} s: `rbd build`", flush=True)
                done = self.rbd.run("build", cwd=project, timeout=BUILD_S)
                assert done.returncode == 0, done.stderr
        build, followers = settled_build(events, BUILD_S, self.quiet_s)
        assert build["outcome"] == "success", f"{case}: {build}"
        detail: dict[str, Any] = self.rbd.request("show", build_id=build["id"])["build"]
        entry.summaries.append(build)
        entry.details.append(detail)
        entry.followers += followers
        cost = analysis_s(project, float(build["wall_s"]))
        if cost is not None:
            entry.analysis.append(cost)
        other = share(build, "other_s")
        print(
            f"  {case} (run {self.run + 1}): wall {build['wall_s']:.2f} s, kind {build['kind']}, "
            f"other {other if other is None else f'{other:.1%}'}, "
            f"queue {share(build, 'queue_s') or 0:.1%}",
            flush=True,
        )
        if self.dump is not None:
            self.dump.mkdir(parents=True, exist_ok=True)
            name = f"{case.replace(' ', '-')}-run{self.run + 1}.json"
            (self.dump / name).write_text(json.dumps(detail, indent=1))


ANALYSIS_REPEATS = 5


def analysis_s(project: Path, wall_s: float) -> float | None:
    """What the daemon's analysis of the build's report costs (the report's parse, the
    critical path, phases, explain): the median of ANALYSIS_REPEATS runs in this process
    on the report cargo keeps of the latest build (target/cargo-timings/cargo-timing.html;
    the one rbd read is gone), with nothing observed beside it (no link records, dirty
    reasons or failed units). None: no report."""
    latest = project / "target" / "cargo-timings" / "cargo-timing.html"
    try:
        html = latest.read_text(errors="replace")
    except OSError:
        return None
    version = parse_cargo_version(cargo_version())
    took = []
    for _ in range(ANALYSIS_REPEATS):
        begin = time.perf_counter()
        timings.analyse(
            BuildResult(outcome="success", wall_s=wall_s),
            parse(html, version),
            timings.Observed(wall_s=wall_s),
        )
        took.append(time.perf_counter() - begin)
    return statistics.median(took)


def webapp_copy(base: Path, quick: bool) -> Path:
    if quick:
        return synth.generate(base / "app", 3)
    app = base / "webapp"
    shutil.copytree(WEBAPP, app, ignore=shutil.ignore_patterns("target"))
    return app


def bump(app: Path, quick: bool) -> None:
    if quick:
        # No registry in a smoke test: every member's version changes instead.
        manifest = app / "Cargo.toml"
        manifest.write_text(manifest.read_text().replace('version = "0.1.0"', 'version = "0.1.1"'))
        return
    package, version = BUMP
    subprocess.run(
        ["cargo", "update", "-p", package, "--precise", version],
        cwd=app,
        check=True,
        capture_output=True,
    )


def start(rbd: Rbd, project: Path) -> None:
    rbd.ok("start", cwd=project)


def profile(app: Path) -> None:
    manifest = app / "Cargo.toml"
    manifest.write_text(manifest.read_text() + PROFILE_CHANGE)


def one_run(
    run: int, cases: dict[str, Case], only: set[str], quick: bool, dump: Path | None
) -> None:
    # Quick: the 3-crate workspace stands in for the web app, and is all it builds.
    sizes = () if quick else SIZES
    with private_daemon("rbd-acct-") as (rbd, base):
        recorder = Recorder(rbd, cases, run, dump, QUICK_QUIET_S if quick else QUIET_S)
        events = rbd.events()
        if only & set(WEBAPP_CASES):
            app = webapp_copy(base, quick)
            recorder.measure("webapp clean", events, app, functools.partial(start, rbd, app))
            if "webapp profile" in only:
                recorder.measure("webapp profile", events, app, functools.partial(profile, app))
            if "webapp bump" in only:
                recorder.measure("webapp bump", events, app, lambda: bump(app, quick), nudge=True)
            rbd.ok("stop", cwd=app)
        for size in sizes:
            if f"synth {size}" not in only:
                continue
            root = synth.generate(base / f"ws{size}", size)
            recorder.measure(f"synth {size}", events, root, functools.partial(start, rbd, root))
            rbd.ok("stop", cwd=root)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def median_share(case: Case, key: str) -> float | None:
    values = [s for s in (share(b, key) for b in case.summaries) if s is not None]
    return statistics.median(values) if values else None


def case_rows(case: Case) -> list[Row]:
    builds = case.summaries
    n = len(builds)
    others = [share(b, "other_s") for b in builds]
    known = [o for o in others if o is not None]
    worst = max(known) if known else None
    sums = [parts_sum(b) for b in builds]
    phases = ", ".join(f"{label} {percent(median_share(case, key))}" for key, label in PARTS)
    kinds = Counter(str(b["kind"]) for b in builds)
    busy = [d["explain"]["busy"] for d in case.details if d.get("explain")]
    busy_text = percent(statistics.median(busy)) if busy and None not in busy else "n/a"
    rebuilt = statistics.median(int(b["units_rebuilt"] or 0) for b in builds)
    fresh = statistics.median(int(b["units_fresh"] or 0) for b in builds)
    wall = statistics.median(float(b["wall_s"]) for b in builds)
    runs = f"{n} run{'s' if n != 1 else ''}"
    rows: list[Row] = [
        (
            f"{case.name}: other / wall, median of {runs} (max)",
            f"{percent(statistics.median(known) if known else None)} (max {percent(worst)})",
            f"≤ {GOAL:.0%} every run",
            None if worst is None else worst <= GOAL,
        ),
        (
            f"{case.name}: each part's share of wall, medians",
            f"{phases}; the parts sum to {min(sums):.1%}–{max(sums):.1%} of wall",
            None,
            None,
        ),
        (
            f"{case.name}: kind; units rebuilt / fresh; explain.busy; wall, medians",
            f"{', '.join(f'{k} ×{c}' for k, c in kinds.items())}; {rebuilt:g} / {fresh:g}; "
            f"busy {busy_text}; wall {wall:.2f} s",
            None,
            None,
        ),
    ]
    if case.analysis:
        cost = statistics.median(case.analysis)
        rows.append(
            (
                f"{case.name}: the daemon's analysis of the report after cargo exits, median",
                f"{cost * 1000:.1f} ms ({cost / wall:.2%} of wall)",
                None,
                None,
            )
        )
    if case.nudged:
        rows.append(
            (
                f"{case.name}: runs where the change alone started a build",
                f"{n - case.nudged} of {n}: no build within {NUDGE_S:g} s of the change (the "
                "daemon log says why: own_writes_ignored?); measured on the build `rbd build` ran",
                f"{n} of {n}",
                False,
            )
        )
    if case.followers:
        rows.append(
            (f"{case.name}: builds that followed the measured one", str(case.followers), None, None)
        )
    return rows


def cargo_version() -> str:
    done = subprocess.run(["cargo", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "cargo unknown"


def order(quick: bool) -> list[str]:
    return list(WEBAPP_CASES) + ([] if quick else [f"synth {size}" for size in SIZES])


def measure(runs: int, only: set[str], quick: bool, dump: Path | None) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    for run in range(runs):
        begin = time.monotonic()
        print(f"run {run + 1} of {runs}", flush=True)
        one_run(run, cases, only, quick, dump)
        print(f"run {run + 1} took {time.monotonic() - begin:.0f} s", flush=True)
    return cases


def rows(cases: dict[str, Case], quick: bool) -> list[Row]:
    out: list[Row] = [
        (
            "projects",
            "3-crate synthetic workspace for the web app (quick)"
            if quick
            else "benchmarks/webapp (axum, tokio, serde; copy, no target/); "
            f"bump: `cargo update -p {BUMP[0]} --precise {BUMP[1]}`; "
            "synthetic workspaces of benchmarks/synth.py",
            None,
            None,
        ),
        ("toolchain", cargo_version(), None, None),
    ]
    for name in order(quick):
        if name in cases:
            out += case_rows(cases[name])
    return out


def run(quick: bool) -> list[Row]:
    """Figure 11 for benchmarks/suite.py."""
    names = order(quick)
    return rows(measure(1 if quick else RUNS, set(names), quick, None), quick)


def parse_only(text: str | None) -> set[str]:
    """`webapp,synth200` → the case names it selects (`webapp` selects its three)."""
    known = order(False)
    if text is None:
        return set(known)
    chosen: set[str] = set()
    for word in (w.strip() for w in text.split(",") if w.strip()):
        matched = [c for c in known if c.replace(" ", "").startswith(word.replace(" ", ""))]
        if not matched:
            raise argparse.ArgumentTypeError(f"no case {word!r}; cases are {known}")
        chosen.update(matched)
    if chosen & {"webapp profile", "webapp bump"}:
        chosen.add("webapp clean")  # they change the build it made
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs of each case ({RUNS})")
    parser.add_argument(
        "--only", metavar="CASE,...", help="webapp, webapp clean, synth10, synth200, ..."
    )
    parser.add_argument("--dump", type=Path, metavar="DIR", help="write each build's detail")
    parser.add_argument("--quick", action="store_true", help="a 3-crate workspace, one run")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args(argv)
    try:
        only = parse_only(args.only)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    quick = args.quick
    if quick:
        only = set(order(True))
    cases = measure(1 if quick else args.runs, only, quick, args.dump)
    report("benchmarks/accounting.py", rows(cases, quick), args.write and not quick)
    return 0


if __name__ == "__main__":
    try:
        status = main()
    finally:
        remove_shared_cache()
    raise SystemExit(status)
