"""Figures 1, 4 and the client half of 5, as `run(quick)`-style functions over the
measurements of benchmarks/daemon_loop.py and benchmarks/overhead.py (used as they are).

- `figure1(quick)`: save → cargo started for rbd and for cargo-watch, bacon and watchexec
  when installed (on PATH or in PEER_BIN), in one interleaved run, every tool's cargo
  timed by the same wrapper; then the builds each starts per editor save pattern
  (tests/save_patterns.py) and per `git checkout` of another branch.
- `figure4(quick)`: rbd's instrumented rebuild against plain `cargo build`
  (overhead.py's edit and build functions, its interleaving).
- `figure5_client(quick)`: `rbd status` against `python -c pass`
  (daemon_loop.client_startup).

Run one with `.venv/bin/python benchmarks/suite.py --only 1`.
"""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import daemon_loop, overhead  # noqa: E402
from benchmarks.common import Row, count_builds, ms, percentile, private_daemon  # noqa: E402
from tests.conftest import Events, Rbd, make_crate  # noqa: E402
from tests.save_patterns import (  # noqa: E402
    BRANCH_MODULES,
    PATTERNS,
    branch_files,
    git,
    make_branches,
)

# Figure 1: edits per tool (quick: one).
EDITS = 50
SPAWN_GOAL_S = 0.015
SPAWN_P99_GOAL_S = 0.030
# How long a watcher gets to react to one edit before the figure gives up on it.
EXTERNAL_WAIT_S = 30.0
# A watcher has settled after its start-up runs once its cargo log is this long unchanged;
# after a save, no more builds come once it is this long unchanged (cargo-watch's own
# debounce is 0.5 s).
EXTERNAL_QUIET_S = 1.5
# Where `benchmarks/serve_loop.py --install-peers` (`cargo install --locked`) puts the
# peers; looked at before PATH.
PEER_BIN = Path.home() / ".cache" / "rbd-bench" / "peers" / "bin"

# Figure 4: counted edits and uncounted warm-up rounds (overhead.py's defaults).
OVERHEAD_EDITS, OVERHEAD_WARMUP = 15, 2

# Figure 5, client half.
CLIENT_RUNS = 30
CLIENT_GOAL = 1.25

# cargo as every tool spawns it, rbd included: this script records when it started and
# ended (bash's $EPOCHREALTIME: no extra process) around the real cargo. Its own start,
# about a millisecond, counts against each tool alike.
CARGO_WRAPPER = """#!/bin/bash
echo "start $EPOCHREALTIME" >> "$RBD_BENCH_SPAWNS"
"$RBD_BENCH_CARGO" "$@"
status=$?
echo "end $EPOCHREALTIME" >> "$RBD_BENCH_SPAWNS"
exit $status
"""

# bacon has no `build` job of its own; a project's bacon.toml may add one.
BACON_TOML = """[jobs.build]
command = ["cargo", "build"]
need_stdout = false
"""


def _main_rs(i: int) -> str:
    return f'fn main() {{ println!("{i}"); }}\n'


# How each watcher is started to run `cargo build` on every change, as its
# documentation says, with its default debounce: the comparison is with what
# a user gets out of the box.
WATCHERS: dict[str, Callable[[str], list[str]]] = {
    "cargo-watch": lambda exe: [exe, "watch", "-x", "build"],
    "bacon": lambda exe: [exe, "--headless", "build"],
    "watchexec": lambda exe: [exe, "--exts", "rs", "--", "cargo", "build"],
}


@dataclass
class Tool:
    """One tool watching a tiny crate of its own, every cargo it spawns logged by the
    wrapper; rbd's daemon events are followed too."""

    name: str
    crate: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    events: Events | None = None
    latencies: list[float] = field(default_factory=list)
    # rbd only: from the write to its build_started event's spawned_at (the time rbd
    # takes just before it forks cargo: the figure's measure before it had peers).
    own: list[float] = field(default_factory=list)
    builds: dict[str, int] = field(default_factory=dict)


NOT_INSTALLED = "not installed (benchmarks/serve_loop.py --install-peers)"
CHECKOUT = f"`git checkout` of another branch ({BRANCH_MODULES} files)"


def peer_exe(name: str) -> str | None:
    return shutil.which(name, path=f"{PEER_BIN}{os.pathsep}{os.environ.get('PATH', '')}")


def wrapper_env(base: Path, log: Path) -> dict[str, str]:
    """The environment in which `cargo` is the logging wrapper (made once in base)."""
    wrapper_dir = base / "bin"
    if not wrapper_dir.exists():
        wrapper_dir.mkdir()
        (wrapper_dir / "cargo").write_text(CARGO_WRAPPER)
        (wrapper_dir / "cargo").chmod(0o755)
    real_cargo = shutil.which("cargo")
    if real_cargo is None:
        raise AssertionError("no cargo on PATH")
    log.touch()
    return {
        "PATH": f"{wrapper_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "RBD_BENCH_SPAWNS": str(log),
        "RBD_BENCH_CARGO": real_cargo,
    }


def figure1(quick: bool) -> list[Row]:
    """Save → cargo started for rbd and each installed peer, measured in one run and
    interleaved (each round edits every tool's crate in turn, the order rotating, while
    all of them watch), then how many builds each starts for each editor's way of saving
    (tests/save_patterns.py) and for a `git checkout` of another branch."""
    edits = 1 if quick else EDITS
    patterns = PATTERNS[:1] if quick else PATTERNS
    missing: list[Row] = []
    with private_daemon("rbd-fig1-") as (rbd, base):
        tools = [_start_rbd(rbd, base)]
        try:
            for name, argv in WATCHERS.items():
                exe = peer_exe(name)
                if exe is None:
                    missing.append(
                        (name, "not installed (serve_loop.py --install-peers)", None, None)
                    )
                    continue
                tools.append(_start_peer(name, argv(exe), base))
            for tool in tools[1:]:
                # Start-up: whatever the watcher runs first (a build, `cargo metadata`).
                _wait_log(tool.log, _done, EXTERNAL_WAIT_S * 4, quiet_s=EXTERNAL_QUIET_S)
            for i in range(edits):
                for k in range(len(tools)):
                    _edit(tools[(i + k) % len(tools)], i)
            for n, pattern in enumerate(patterns):
                for tool in tools:
                    save = partial(
                        pattern.save,
                        tool.crate / "src" / "main.rs",
                        _main_rs(edits + n),
                        pattern.gap_s,
                        pattern.fsync_s,
                    )
                    tool.builds[pattern.label] = _count(tool, save)
            if not quick:
                for tool in tools:
                    checkout = partial(git, tool.crate, "checkout", "-q", "other")
                    tool.builds[CHECKOUT] = _count(tool, checkout)
        finally:
            for tool in tools:
                if tool.process is not None:
                    _kill_session(tool.process)
    return _figure1_rows(tools, edits) + missing


def _crate(base: Path, name: str) -> Path:
    crate = make_crate(base / name / "demo", files=branch_files())
    make_branches(crate)
    return crate


def _start_rbd(rbd: Rbd, base: Path) -> Tool:
    crate = _crate(base, "rbd")
    log = base / "rbd" / "spawns.log"
    rbd.env.update(wrapper_env(base, log))
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    events.finished()
    return Tool("rbd", crate, log, events=events)


def _start_peer(name: str, argv: list[str], base: Path) -> Tool:
    crate = _crate(base, name)
    if name == "bacon":
        (crate / "bacon.toml").write_text(BACON_TOML)
    log = base / name / "spawns.log"
    env = {**os.environ, **wrapper_env(base, log)}
    # Its own session: the watcher, its shells and cargo are killed as one group.
    process = subprocess.Popen(
        argv,
        cwd=crate,
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return Tool(name, crate, log, process=process)


def _edit(tool: Tool, i: int) -> None:
    """One write of the tool's src/main.rs: seconds until its cargo started, then its
    build waited out (the next edit comes once that build is over, for every tool)."""
    before = len(_lines(tool.log))
    written = time.time()
    (tool.crate / "src" / "main.rs").write_text(_main_rs(i))
    lines = _wait_log(tool.log, partial(_started_since, before), EXTERNAL_WAIT_S)
    spawned = next(t for w, t in lines[before:] if w == "start")
    tool.latencies.append(spawned - written)
    if tool.events is not None:
        started = tool.events.started()
        tool.own.append(started["spawned_at"] - written)
        tool.events.finished()
    _wait_log(tool.log, _done, EXTERNAL_WAIT_S)


def _count(tool: Tool, save: Callable[[], None]) -> int:
    """How many builds the tool starts for one save, counted once it has been quiet for
    EXTERNAL_QUIET_S (rbd: its build_started events; a peer: its cargo runs)."""
    if tool.events is not None:
        save()
        return count_builds(tool.events, EXTERNAL_QUIET_S).started
    before = sum(1 for w, _ in _lines(tool.log) if w == "start")
    save()
    lines = _wait_log(tool.log, _none_running, EXTERNAL_WAIT_S, quiet_s=EXTERNAL_QUIET_S)
    return sum(1 for w, _ in lines if w == "start") - before


def _figure1_rows(tools: list[Tool], edits: int) -> list[Row]:
    p50 = {tool.name: percentile(tool.latencies, 0.5) for tool in tools}
    p99 = {tool.name: percentile(tool.latencies, 0.99) for tool in tools}
    rows: list[Row] = [
        (
            f"rbd: save → cargo started (the wrapper's clock), p50 over {edits} edits, "
            "interleaved with the peers",
            ms(p50["rbd"]),
            f"≤ {SPAWN_GOAL_S * 1000:.0f} ms",
            p50["rbd"] <= SPAWN_GOAL_S,
        ),
        (
            "rbd: the same, p99",
            ms(p99["rbd"]),
            f"≤ {SPAWN_P99_GOAL_S * 1000:.0f} ms",
            p99["rbd"] <= SPAWN_P99_GOAL_S,
        ),
    ]
    if "bacon" in p50:
        rows.append(
            (
                "rbd's p50 below bacon's, same run",
                f"{ms(p50['rbd'])} vs {ms(p50['bacon'])}",
                "below",
                p50["rbd"] < p50["bacon"],
            )
        )
    rbd = tools[0]
    rows.append(
        (
            "rbd: save → its build_started `spawned_at` (just before its fork of cargo), p50 / p99",
            f"{ms(percentile(rbd.own, 0.5))} / {ms(percentile(rbd.own, 0.99))}",
            None,
            None,
        )
    )
    for tool in tools[1:]:
        rows.append(
            (
                f"{tool.name}: save → cargo started, p50 / p99 over {edits} edits (its "
                "default debounce)",
                f"{ms(p50[tool.name])} / {ms(p99[tool.name])}",
                None,
                None,
            )
        )
    for label in rbd.builds:
        counts = ", ".join(f"{tool.name} {tool.builds.get(label, '?')}" for tool in tools)
        rows.append((f"builds for one save: {label}", counts, "rbd: 1", rbd.builds[label] == 1))
    return rows


def _lines(log: Path) -> list[tuple[str, float]]:
    out = []
    for line in log.read_text().splitlines():
        what, _, when = line.partition(" ")
        # EPOCHREALTIME uses the locale's decimal separator.
        out.append((what, float(when.replace(",", "."))))
    return out


def _started_since(before: int, lines: list[tuple[str, float]]) -> bool:
    return any(w == "start" for w, _ in lines[before:])


def _done(lines: list[tuple[str, float]]) -> bool:
    """A cargo ran and the last one ended. Not every start has its end: a watcher that
    kills its build for a newer change (bacon) kills the wrapper too."""
    return bool(lines) and lines[-1][0] == "end"


def _none_running(lines: list[tuple[str, float]]) -> bool:
    """No cargo of the log runs (there may have been none)."""
    return not lines or lines[-1][0] == "end"


def _wait_log(
    log: Path,
    predicate: Callable[[list[tuple[str, float]]], bool],
    timeout: float,
    quiet_s: float = 0.0,
) -> list[tuple[str, float]]:
    """Poll the spawn log (every 2 ms: cheap next to what is measured) until predicate
    holds of it and it has not changed for quiet_s."""
    deadline = time.monotonic() + timeout
    last: list[tuple[str, float]] = []
    changed = time.monotonic()
    while time.monotonic() < deadline:
        lines = _lines(log)
        if lines != last:
            last, changed = lines, time.monotonic()
        if predicate(lines) and time.monotonic() - changed >= quiet_s:
            return lines
        time.sleep(0.002)
    raise AssertionError(f"the watcher's cargo log did not settle within {timeout} s: {last}")


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def figure4(quick: bool) -> list[Row]:
    """overhead.py's measurement: the example project rebuilt after the same one-line
    edits by rbd's builder (with and without its shim) and by plain `cargo build`."""
    edits, warmup = (1, 0) if quick else (OVERHEAD_EDITS, OVERHEAD_WARMUP)
    return overhead.rows(overhead.measure(edits, warmup))


def figure5_client(quick: bool) -> list[Row]:
    runs = 1 if quick else CLIENT_RUNS
    with private_daemon("rbd-fig5-") as (rbd, _):
        # A user's Python caches bytecode; this sandbox's PYTHONDONTWRITEBYTECODE would
        # make every run compile what is not cached yet, which no user pays. One
        # untimed round writes that cache (and warms the page cache).
        rbd.env.pop("PYTHONDONTWRITEBYTECODE", None)
        daemon_loop.client_startup(rbd, 1)
        status, bare = daemon_loop.client_startup(rbd, runs)
    ratio = statistics.median(status) / statistics.median(bare)
    return [
        (f"`rbd status` wall, median of {len(status)}", ms(statistics.median(status)), None, None),
        (
            f"`python -c pass` wall, median of {len(bare)} (interleaved)",
            ms(statistics.median(bare)),
            None,
            None,
        ),
        (
            "ratio `rbd status` / `python -c pass`",
            f"{ratio:.2f}",
            f"≤ {CLIENT_GOAL}",
            ratio <= CLIENT_GOAL,
        ),
    ]
