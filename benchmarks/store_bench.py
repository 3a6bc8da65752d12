"""Benchmarks of the daemon's answers: figure 5, the socket round trip of `status` at a
steady 200 requests/s; figure 6, `history` and `suggest` over a store of 100,000 builds.

Run from the repository root after `.ci/setup`:

    .venv/bin/python benchmarks/store_bench.py [--quick] [--write]

It fills a store at the path a private daemon (XDG dirs in a temp dir) will open with
builds of one tiny crate, recorded through rbd.daemon.store.sqlite.Store as the daemon records them,
then starts that daemon on the crate, so it never touches a daemon you run. Client runs
are interleaved with `python -c pass`; medians and ratios are printed, and `--write`
appends them to benchmarks/RESULTS.md. `--quick` uses tiny sizes (a few seconds).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.daemon_loop import Row, percentile, report  # noqa: E402
from rbd.client.connection import Connection  # noqa: E402
from rbd.contract import protocol  # noqa: E402
from rbd.daemon.advice import probe  # noqa: E402
from rbd.daemon.advice import rules as suggest  # noqa: E402
from rbd.daemon.build.records import BuildHeader, BuildResult, UnitRecord  # noqa: E402
from rbd.daemon.store.sqlite import Store  # noqa: E402
from tests.conftest import Rbd, make_crate  # noqa: E402

# Figure 5: one request every 5 ms on a fixed schedule.
INTERVAL_S = 0.005
# A request sent this long after its slot counts as late: well above the ~0.1 ms a
# sleep overshoots by, so only a slow reply (or a stalled benchmark) slips the schedule.
LATE_S = 0.001
# Figure 6: what the issue asks of an answer and of a client command.
ANSWER_GOAL_S = 0.050
CLIENT_GOAL_RATIO = 1.5

CARGO_ARGV = ["cargo", "build", "--message-format=json", "--timings", "-v"]
SOURCES = ["src/main.rs", "src/routes.rs", "src/db.rs", "src/models.rs", "src/http.rs"]
LIBS = ["app_core", "app_db", "app_http"]


@dataclass
class Sizes:
    paced_s: float  # figure 5: how long the 200 req/s series runs
    builds: int  # figure 6: builds in the store
    requests: int  # figure 6: answers timed per request kind
    runs: int  # figure 6: client runs per command

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        return cls(0.5, 200, 3, 3) if quick else cls(10.0, 100_000, 30, 30)


def run(quick: bool) -> list[Row]:
    """Both figures' rows (measure, value, goal, met), measured on a private daemon."""
    sizes = Sizes.of(quick)
    # Short paths: a Unix socket path must fit in 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="rbd-store-", dir="/tmp"))
    rbd = Rbd(base)
    # Its own cache dir (the shim is compiled into it once, ~0.5 s) so that nothing
    # outlives the run; the shared one of tests.conftest is removed only by pytest.
    rbd.env["XDG_CACHE_HOME"] = str(base / "cache")
    try:
        crate = make_crate(base / "demo")
        project = str(crate.resolve())
        populate_s = populate(Path(rbd.store), project, sizes.builds)
        rbd.start_daemon()
        events = rbd.events()
        rbd.ok("start", cwd=crate)
        # The first build (rbd start builds at once) must not share the CPU with the
        # measurements, and it adds one build of its own to the store.
        first = events.finished()
        watched = [p["root"] for p in rbd.request(protocol.STATUS)["projects"]]
        if watched != [project]:
            raise RuntimeError(f"the daemon watches {watched}, the store was filled for {project}")
        rows = figure5(rbd, sizes)
        rows += figure6(rbd, crate, project, sizes, populate_s, first["outcome"])
    finally:
        rbd.close()
        shutil.rmtree(base, ignore_errors=True)
    return rows


# Filling the store ------------------------------------------------------------------


def populate(path: Path, project: str, count: int) -> float:
    """Record count finished builds of project through the Store API; seconds taken.
    The Store API (two transactions a build, as the daemon writes them) does ~10,000
    builds/s here, so 100,000 take seconds: no need for a faster, less faithful path."""
    rng = random.Random(5)
    store = Store(path)
    begin = time.perf_counter()
    started = datetime.now(UTC) - timedelta(seconds=45 * count)
    try:
        for i in range(count):
            started += timedelta(seconds=rng.uniform(5, 85))
            # One build in 50 is a first build (rbd start, a daemon restart): no trigger.
            trigger = [] if i % 50 == 0 else rng.sample(SOURCES, rng.choice((1, 1, 1, 2)))
            started_at = started.isoformat(timespec="milliseconds")
            header = BuildHeader(project, started_at, tuple(trigger), tuple(CARGO_ARGV), "default")
            build_id = store.begin_build(header)
            store.finish_build(build_id, fake_result(rng, trigger))
        # Read back what the daemon will read: the newest builds, in order.
        newest = store.history(project, 3)
        if len(newest) != min(3, count) or newest[0]["id"] != build_id:
            raise RuntimeError(f"the store does not read back what was recorded: {newest}")
    finally:
        # Closing the last connection checkpoints the WAL into the file and removes it,
        # as a daemon's shutdown does: the daemon starts on a store at rest.
        store.close()
    return time.perf_counter() - begin


def fake_result(rng: random.Random, trigger: list[str]) -> BuildResult:
    """A build as the builder records one of a small workspace: 80% successful
    rebuilds of 1-4 units, failures with rendered errors, cancelled builds."""
    roll = rng.random()
    outcome = "success" if roll < 0.80 else "failure" if roll < 0.93 else "cancelled"
    wall = rng.lognormvariate(0.25, 0.35)
    if outcome == "cancelled":
        wall *= rng.uniform(0.1, 0.7)
    rebuilt = rng.choice((1, 1, 2, 2, 3, 4))
    linked = outcome == "success"
    units = [
        fake_unit(rng, name, "lib", i * 0.3, trigger)
        for i, name in enumerate(rng.sample(LIBS, rebuilt - 1))
    ]
    bin_unit = fake_unit(rng, "app", "bin", (rebuilt - 1) * 0.3, trigger)
    if linked:
        bin_unit.link_s = round(wall * rng.uniform(0.3, 0.5), 3)
    bin_unit.critical_path = True
    units.append(bin_unit)
    warnings = rng.choice((0, 0, 0, 1, 2))
    errors = rng.randint(1, 3) if outcome == "failure" else 0
    diagnostics = "".join(fake_diagnostic(rng, "warning") for _ in range(warnings))
    first_error = None
    if errors:
        rendered = [fake_diagnostic(rng, "error") for _ in range(errors)]
        first_error, diagnostics = rendered[0], "".join(rendered) + diagnostics
    overhead, other = rng.uniform(0.03, 0.08), rng.uniform(0.05, 0.2)
    link = bin_unit.link_s or 0.0
    return BuildResult(
        outcome=outcome,
        wall_s=wall,
        settle_s=None if not trigger else rng.uniform(0.02, 0.035),
        errors=errors,
        warnings=warnings,
        units_rebuilt=rebuilt,
        units_fresh=88 - rebuilt,
        linked=linked,
        linker_seen="rust-lld" if linked else None,
        first_error=first_error,
        diagnostics=diagnostics,
        units=units,
        phases={
            "overhead_s": round(overhead, 3),
            "compile_s": round(max(0.0, wall - overhead - other - link), 3),
            # The chain ends in a binary: cargo gives no frontend/codegen split.
            "frontend_s": None,
            "codegen_s": None,
            "link_s": round(link, 3) if linked else 0.0,
            "build_script_s": 0.0,
            "lock_wait_s": 0.0 if rng.random() < 0.95 else round(rng.uniform(0.1, 2.0), 3),
            "other_s": round(other, 3),
        },
    )


def fake_unit(
    rng: random.Random, name: str, kind: str, start: float, trigger: list[str]
) -> UnitRecord:
    total = round(rng.uniform(0.2, 1.2), 2)  # cargo rounds unit times to 10 ms
    frontend = round(total * rng.uniform(0.4, 0.7), 3) if kind == "lib" else None
    changed = trigger[0] if trigger else "src/lib.rs"
    return UnitRecord(
        name=name,
        target=name,
        kind=kind,
        start_s=round(start + rng.uniform(0.03, 0.08), 3),
        total_s=total,
        compile_s=total,
        frontend_s=frontend,
        codegen_s=None if frontend is None else round(total - frontend, 3),
        dirty_reason=(
            f"the file `{changed}` has changed"
            if kind == "bin" or rng.random() < 0.5
            else f"the dependency {rng.choice(LIBS)} was rebuilt"
        ),
    )


def fake_diagnostic(rng: random.Random, level: str) -> str:
    line = rng.randint(1, 400)
    code, text = (
        ("E0308", "mismatched types") if level == "error" else ("", "unused variable: `req`")
    )
    head = f"{level}[{code}]" if code else level
    return (
        f"{head}: {text}\n"
        f"  --> {rng.choice(SOURCES)}:{line}:9\n"
        "   |\n"
        f"{line:>3} |     let req = handler(state, body).await;\n"
        "   |         ^^^ help: if this is intentional, prefix it with an underscore: `_req`\n"
        "   |\n"
        "   = note: `#[warn(unused_variables)]` on by default\n\n"
    )


# Figure 5 ---------------------------------------------------------------------------


def figure5(rbd: Rbd, sizes: Sizes) -> list[Row]:
    with Connection.open(rbd.socket) as connection:
        # The daemon's first answers on a connection warm its code paths; not counted.
        for _ in range(20):
            connection.request(protocol.STATUS)
        rtts, lags = paced(connection, round(sizes.paced_s / INTERVAL_S))
    late = sum(1 for lag in lags if lag > LATE_S)
    rate = f"{1 / INTERVAL_S:.0f} req/s"
    return [
        (
            f"`status` round trip at {rate}, one connection, p50 of {len(rtts)}",
            ms(percentile(rtts, 0.5)),
            None,
            None,
        ),
        (f"`status` round trip at {rate}, p99", ms(percentile(rtts, 0.99)), None, None),
        (f"`status` round trip at {rate}, max", ms(max(rtts)), None, None),
        (
            f"requests late (sent > {LATE_S * 1000:g} ms after their slot)",
            f"{late} of {len(rtts)} (worst {ms(max(lags))})",
            None,
            None,
        ),
    ]


def paced(connection: Connection, count: int) -> tuple[list[float], list[float]]:
    """Round trips of count `status` requests, one per INTERVAL_S slot of a monotonic
    schedule, and how late each was sent. A late request is sent at once rather than
    skipped: the schedule does not stretch to hide slow replies."""
    rtts, lags = [], []
    first = time.monotonic() + INTERVAL_S
    for i in range(count):
        slot = first + i * INTERVAL_S
        wait = slot - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # pacing to the schedule, not waiting on an event
        lags.append(max(0.0, time.monotonic() - slot))
        begin = time.perf_counter()
        connection.request(protocol.STATUS)
        rtts.append(time.perf_counter() - begin)
    return rtts, lags


# Figure 6 ---------------------------------------------------------------------------


def figure6(
    rbd: Rbd, crate: Path, project: str, sizes: Sizes, populate_s: float, first_outcome: str
) -> list[Row]:
    history_s, suggest_s = answer_times(rbd, project, sizes.requests)
    breakdown = suggest_breakdown(rbd, project, sizes.requests)
    history_cli, suggest_cli, bare = client_times(rbd, crate, sizes.runs)
    recorded, size = store_size(Path(rbd.store))
    rows: list[Row] = [
        (
            f"store: builds of one project (Store API, {sizes.builds / populate_s:,.0f} builds/s"
            f" to fill; +1 first build by the daemon: {first_outcome})",
            f"{recorded:,}",
            None,
            None,
        ),
        (
            "store bytes per build (rbd.sqlite3 + -wal, daemon running)",
            f"{size / recorded:,.0f}",
            None,
            None,
        ),
    ]
    for name, times in (("history", history_s), ("suggest", suggest_s)):
        p50 = statistics.median(times)
        rows.append(
            (
                f"daemon answer to `{name}` (socket round trip), p50 of {len(times)}",
                ms(p50),
                f"≤ {ANSWER_GOAL_S * 1000:.0f} ms",
                p50 <= ANSWER_GOAL_S,
            )
        )
        rows.append((f"daemon answer to `{name}`, max", ms(max(times)), None, None))
    rows.append(
        (
            "`suggest` in-process, medians: store.history / units_of / probe.probe / rules",
            " / ".join(ms(breakdown[key]) for key in ("history", "units_of", "probe", "rules")),
            None,
            None,
        )
    )
    rows.append(
        (
            "probe's tools alone, medians: " + " / ".join(f"`{t}`" for t in TOOLS),
            " / ".join(ms(breakdown[t]) for t in TOOLS),
            None,
            None,
        )
    )
    bare_p50 = statistics.median(bare)
    rows.append(
        (
            f"`python -c pass` wall, median of {len(bare)} (interleaved; all bytecode cached)",
            ms(bare_p50),
            None,
            None,
        )
    )
    for name, times in (("history", history_cli), ("suggest", suggest_cli)):
        ratio = statistics.median(times) / bare_p50
        rows.append(
            (f"`rbd {name}` wall, median of {len(times)}", ms(statistics.median(times)), None, None)
        )
        rows.append(
            (
                f"ratio `rbd {name}` / `python -c pass`",
                f"{ratio:.2f}",
                f"≤ {CLIENT_GOAL_RATIO}",
                ratio <= CLIENT_GOAL_RATIO,
            )
        )
    return rows


def answer_times(rbd: Rbd, project: str, count: int) -> tuple[list[float], list[float]]:
    """Round trips of `history` and `suggest`, interleaved, with the arguments the
    client sends (cwd in the project, the client's environment)."""
    history, suggested = [], []
    with Connection.open(rbd.socket) as connection:
        for _ in range(count):
            begin = time.perf_counter()
            reply = connection.request(protocol.HISTORY, path=project, all=False, limit=20)
            history.append(time.perf_counter() - begin)
            if len(reply["builds"]) != 20:
                raise RuntimeError(f"history gave {len(reply['builds'])} builds, not 20")
            begin = time.perf_counter()
            reply = connection.request(protocol.SUGGEST, path=project, env=rbd.env)
            suggested.append(time.perf_counter() - begin)
            if reply["project"] != project:
                raise RuntimeError(f"suggest answered for {reply['project']}")
    return history, suggested


# The subprocesses probe.probe runs (cargo and rustc concurrently with the two rustup ones).
TOOLS = ("cargo --version", "rustc -vV", "rustup toolchain list", "rustup component list")


def suggest_breakdown(rbd: Rbd, project: str, count: int) -> dict[str, float]:
    """Medians of what the daemon's `suggest` does, each step timed on its own in this
    process (a second connection to the same store): where a slow answer goes."""
    steps: dict[str, list[float]] = {}

    def timed(key: str, work: Callable[[], Any]) -> Any:
        begin = time.perf_counter()
        result = work()
        steps.setdefault(key, []).append(time.perf_counter() - begin)
        return result

    store = Store(Path(rbd.store))
    root = Path(project)
    nightly = nightly_toolchain(rbd, root)
    argvs = {
        "cargo --version": ["cargo", "--version"],
        "rustc -vV": ["rustc", "-vV"],
        "rustup toolchain list": ["rustup", "toolchain", "list"],
        "rustup component list": [
            "rustup",
            "component",
            "list",
            "--toolchain",
            nightly,
            "--installed",
        ],
    }
    try:
        for _ in range(count):
            builds = timed("history", partial(store.history, project, suggest.WINDOW))
            ids = [int(b["id"]) for b in builds]
            units = timed("units_of", partial(store.units_of, ids))
            env = timed("probe", partial(anyio.run, probe.probe, root, rbd.env))
            ctx = suggest.Context(env, builds, units, root=project)
            timed("rules", partial(suggest.suggest, ctx))
            for key, argv in argvs.items():
                timed(key, partial(tool, argv, rbd, root))
    finally:
        store.close()
    return {key: statistics.median(times) for key, times in steps.items()}


def nightly_toolchain(rbd: Rbd, root: Path) -> str:
    # What probe asks rustup about when a nightly is installed ("nightly" when none is:
    # the command then fails fast, as probe's would not run at all).
    listing = tool(["rustup", "toolchain", "list"], rbd, root)
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    return next((name for name in names if name.startswith("nightly")), "nightly")


def tool(argv: list[str], rbd: Rbd, root: Path) -> str:
    done = subprocess.run(
        argv,
        cwd=root,
        env={**rbd.env, "RUSTUP_AUTO_INSTALL": "0"},
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return done.stdout


def client_times(rbd: Rbd, crate: Path, runs: int) -> tuple[list[float], list[float], list[float]]:
    """Wall times of `rbd history`, `rbd suggest` and `python -c pass`, interleaved,
    run as a user would: the console script, cwd in the project, bytecode cached."""
    rbd_bin = ROOT / ".venv" / "bin" / "rbd"
    if not rbd_bin.exists():
        rbd_bin = Path(sys.executable).parent / "rbd"
    history: list[float] = []
    suggested: list[float] = []
    bare: list[float] = []
    commands = (
        ([str(rbd_bin), "history"], history),
        ([str(rbd_bin), "suggest"], suggested),
        ([sys.executable, "-c", "pass"], bare),
    )
    # A user's client starts from the bytecode Python cached on its first run. The
    # environment may set PYTHONDONTWRITEBYTECODE (this sandbox does): every run would then
    # compile the client from source, ~7 ms more here, which no user pays. One untimed run
    # of each command writes that cache (and warms the page cache).
    env = {k: v for k, v in rbd.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for round_ in range(runs + 1):
        for command, into in commands:
            begin = time.perf_counter()
            subprocess.run(command, cwd=crate, env=env, stdout=subprocess.DEVNULL, check=True)
            if round_:
                into.append(time.perf_counter() - begin)
    return history, suggested, bare


def store_size(path: Path) -> tuple[int, int]:
    """(builds recorded, bytes of the store file and its WAL)."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        count = int(db.execute("SELECT COUNT(*) FROM builds").fetchone()[0])
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    return count, size


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    report("benchmarks/store_bench.py", run(args.quick), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
