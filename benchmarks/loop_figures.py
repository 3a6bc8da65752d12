"""Figures 1, 4 and the client half of 5, as `run(quick)`-style functions over the
measurements of benchmarks/daemon_loop.py and benchmarks/overhead.py (used as they are).

- `figure1(quick)`: save → cargo spawned for rbd (daemon_loop.save_to_spawn), and
  the same for cargo-watch, bacon and watchexec when they are installed.
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
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import daemon_loop, overhead  # noqa: E402
from benchmarks.common import Row, ms, percentile, private_daemon  # noqa: E402
from tests.conftest import make_crate  # noqa: E402

# Figure 1: edits per tool (quick: one).
EDITS = 50
SPAWN_GOAL_S = 0.050
# How long a watcher gets to react to one edit before the figure gives up on it.
EXTERNAL_WAIT_S = 30.0
# A watcher has settled after its start-up runs once its cargo log is this long unchanged.
EXTERNAL_QUIET_S = 1.5

# Figure 4: counted edits and uncounted warm-up rounds (overhead.py's defaults).
OVERHEAD_EDITS, OVERHEAD_WARMUP = 15, 2

# Figure 5, client half.
CLIENT_RUNS = 30
CLIENT_GOAL = 1.25

# cargo as another watcher spawns it: this script records when it started and
# ended (bash's $EPOCHREALTIME: no extra process) around the real cargo. Its
# own start, about a millisecond, counts against the watcher.
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


def figure1(quick: bool) -> list[Row]:
    edits = 1 if quick else EDITS
    with private_daemon("rbd-fig1-") as (rbd, base):
        crate = make_crate(base / "demo")
        latencies = daemon_loop.save_to_spawn(rbd, crate, edits)
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    rows: list[Row] = [
        (
            f"rbd: save → cargo spawned, p50 over {edits} edits (default settle)",
            ms(p50),
            f"≤ {SPAWN_GOAL_S * 1000:.0f} ms",
            p50 <= SPAWN_GOAL_S,
        ),
        ("rbd: save → cargo spawned, p99", ms(p99), None, None),
    ]
    for name, argv in WATCHERS.items():
        exe = shutil.which(name)
        if exe is None:
            rows.append((f"{name}: save → cargo spawned", "not installed", None, None))
            continue
        try:
            measured = external_save_to_spawn(name, argv(exe), edits)
        except (AssertionError, OSError) as exc:
            rows.append((f"{name}: save → cargo spawned", f"failed: {exc}", None, None))
            continue
        rows.append(
            (
                f"{name}: save → cargo spawned, p50 over {edits} edits (its default "
                "debounce; via a cargo wrapper)",
                ms(percentile(measured, 0.5)),
                None,
                None,
            )
        )
        rows.append(
            (f"{name}: save → cargo spawned, p99", ms(percentile(measured, 0.99)), None, None)
        )
    return rows


def external_save_to_spawn(name: str, argv: list[str], edits: int) -> list[float]:
    """Seconds from a write of src/main.rs to the watcher's `cargo` starting, per edit,
    with the watcher running argv in a tiny crate of its own."""
    base = Path(tempfile.mkdtemp(prefix=f"rbd-{name}-"))
    process: subprocess.Popen[bytes] | None = None
    try:
        crate = make_crate(base / "demo")
        if name == "bacon":
            (crate / "bacon.toml").write_text(BACON_TOML)
        wrapper_dir = base / "bin"
        wrapper_dir.mkdir()
        (wrapper_dir / "cargo").write_text(CARGO_WRAPPER)
        (wrapper_dir / "cargo").chmod(0o755)
        log = base / "spawns.log"
        log.touch()
        real_cargo = shutil.which("cargo")
        if real_cargo is None:
            raise AssertionError("no cargo on PATH")
        env = {
            **os.environ,
            "PATH": f"{wrapper_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "RBD_BENCH_SPAWNS": str(log),
            "RBD_BENCH_CARGO": real_cargo,
        }
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
        # Start-up: whatever the watcher runs first (a build, `cargo metadata`) is over.
        _wait_log(log, _done, EXTERNAL_WAIT_S, quiet_s=EXTERNAL_QUIET_S)
        main = crate / "src" / "main.rs"
        latencies = []
        for i in range(edits):
            before = len(_lines(log))
            written = time.time()
            main.write_text(_main_rs(i))
            lines = _wait_log(log, partial(_started_since, before), EXTERNAL_WAIT_S)
            spawned = next(t for w, t in lines[before:] if w == "start")
            latencies.append(spawned - written)
            # The next edit only once that build is over, as for rbd.
            _wait_log(log, _done, EXTERNAL_WAIT_S)
        return latencies
    finally:
        if process is not None:
            _kill_session(process)
        shutil.rmtree(base, ignore_errors=True)


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
    starts = sum(1 for w, _ in lines if w == "start")
    return starts > 0 and starts == sum(1 for w, _ in lines if w == "end")


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
