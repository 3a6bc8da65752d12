"""Where `rbd status` spends its start-up, millisecond by millisecond, above `python -c pass`;
and the `suggest` round trip over the socket once the probe is warm (issue 17).

Run from the repository root after `.ci/setup`:

    .venv/bin/python benchmarks/client_startup.py [--runs 40] [--against REV] [--quick] [--write]

It starts a private daemon (XDG dirs in a temp dir) watching one tiny crate, waits for
its first build, then runs a ladder of programs, interleaved in a fresh random order
each round, each one doing a step more of what `rbd status` does than the one before
(and ending with posix._exit, so that the interpreter's exit is a step of its own):

    python -S                               the interpreter alone (no site)
    python                                  + site: the venv's .pth files
    import rbd.client.cli, render           + every import the status path makes
    + cli._status_args(["status"])          + argument parsing, as main() does it
    + Connection.open()                     + connect, peer check, hello round trip
    + conn.request("status")                + the request and its reply
    + render.status(...)                    + rendering
    cli.main(["status"]) then os._exit      + printing (everything but the exit)
    cli.main(["status"])                    + the interpreter's exit (finalization)
    python -c pass                          the baseline, with its own exit
    main() with sys.argv = [.., "status"]   main() as the program: `status` skips the
                                            finalization (os._exit once flushed)
    python -m rbd.client status             what `-m` adds to that (runpy)
    rbd status                              what the pip console script adds to that
                                            (its shebang exec and wrapper)

Each step's cost is the difference of the medians of consecutive rungs, so the steps
add up exactly to `rbd status` minus `python -c pass` (the exit is counted beyond the
one `python -c pass` pays itself). Each is given in wall time
and in CPU time (user + system, from the child's rusage), which varies far less on a
machine shared with other work. `python -X importtime` splits the imports step by
module (medians of its own runs; its clock adds a little to each import).

`--against REV` installs REV's client as benchmarks/client_versus.py does (a git
worktree, a venv of its own, the strict editable install) and runs its ladder in the
same rounds against the same daemon: the before and after of a change, side by side.

Then the `suggest` round trip: one connection, one warm-up request (it fills the
probe's cache), then many requests, median and p90 against the goal of 5 ms.

Every run starts from cached bytecode, as a user's client does (this sandbox sets
PYTHONDONTWRITEBYTECODE, which no user pays for: one untimed round writes the cache).
`--quick` runs 3 rounds (a smoke test: the numbers mean little); the full run (40
rounds of 13 programs, 15 importtime runs, 300 `suggest` requests) takes about 30 s,
twice that with `--against` (plus its install, about 20 s).
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.client_versus import install_revision, remove_revision  # noqa: E402
from benchmarks.common import (  # noqa: E402
    Row,
    ms,
    percentile,
    private_daemon,
    remove_shared_cache,
    report,
)
from rbd.client.connection import Connection  # noqa: E402
from rbd.contract import protocol  # noqa: E402
from tests.conftest import Rbd, make_crate  # noqa: E402

RATIO_GOAL = 2.0
# (step, what the rung adds, argv)
Rung = tuple[str, str, list[str]]
SUGGEST_GOAL_S = 0.005

# Every rung but the last ones ends here, skipping the interpreter's finalization (posix
# is built in and always loaded: importing it costs nothing), so each step is its work
# alone and the exit is one step of its own.
EXIT = "; import posix; posix._exit(0)"
IMPORTS = "from rbd.client import cli, render"
# What main() parses with: `rbd status` without argparse (_status_args), a revision
# before that with the parser of that command alone, one before that with the whole one.
PARSE = IMPORTS + "; f = getattr(cli, '_status_args', lambda argv: None)"
PARSE += "; n = cli._parser.__code__.co_argcount"
PARSE += "; a = f(['status']) or cli._parser(*['status'][:n]).parse_args(['status'])"
CONNECT = PARSE + "; from rbd.client.connection import Connection; c = Connection.open()"
REQUEST = CONNECT + "; r = c.request('status', path=None)"
RENDER = (
    REQUEST + "; t = render.status({'daemon': r['daemon'], 'projects': r['projects']}); c.close()"
)
# What the console script runs, without its wrapper: main() does all of the above and
# prints; flushed, as the interpreter's exit would.
MAIN_NO_EXIT = "import os, sys; from rbd.client.cli import main; s = main(['status']); "
MAIN_NO_EXIT += "sys.stdout.flush(); os._exit(s)"
MAIN = "import sys; from rbd.client.cli import main; sys.exit(main(['status']))"
# main() as the console script calls it, argv from sys.argv: since issue 17, `status`
# then ends with os._exit once flushed; a call with argv (MAIN) always returns.
PROGRAM = "import sys; sys.argv[1:] = ['status']; from rbd.client.cli import main; sys.exit(main())"


def ladder(python: str, rbd_bin: str) -> list[Rung]:
    """(step, what the rung adds, argv): the chain from "interpreter" to "exit", each rung
    doing the previous one's work and one step more, then `python -c pass` itself, and
    the two ways a user runs the client."""
    return [
        ("interpreter", "`python -S`: the interpreter, no site", [python, "-S", "-c", EXIT[2:]]),
        ("site", "site and the venv's .pth files", [python, "-c", EXIT[2:]]),
        (
            "imports",
            "the status path's imports (cli, connection, contract, render)",
            [python, "-c", IMPORTS + EXIT],
        ),
        (
            "parse",
            "argument parsing (as main() parses `status`)",
            [python, "-c", PARSE + EXIT],
        ),
        ("connect", "connect, peer check, `hello` round trip", [python, "-c", CONNECT + EXIT]),
        ("request", "the `status` request and its reply", [python, "-c", REQUEST + EXIT]),
        ("render", "rendering the reply", [python, "-c", RENDER + EXIT]),
        ("print", "printing, main()'s own work", [python, "-c", MAIN_NO_EXIT]),
        ("exit", "the interpreter's exit (finalization)", [python, "-c", MAIN]),
        ("pass", "`python -c pass`", [python, "-c", "pass"]),
        ("program", "main() as the program runs it (argv from sys.argv)", [python, "-c", PROGRAM]),
        (
            "-m",
            "`python -m rbd.client status` (runpy)",
            [python, "-m", "rbd.client", "status"],
        ),
        ("script", "`rbd status`, the pip console script", [rbd_bin, "status"]),
    ]


def run_ladders(
    ladders: dict[str, list[Rung]],
    rounds: int,
    env: dict[str, str],
    cwd: Path,
) -> dict[str, dict[str, list[float]]]:
    """Wall times per client (this checkout "", or a revision) and rung, every rung of
    every client in one fresh random order per round."""
    times: dict[str, dict[str, list[float]]] = {
        name: {key + step: [] for step, _, _ in rungs for key in ("", CPU)}
        for name, rungs in ladders.items()
    }
    everything = [(name, step, argv) for name, rungs in ladders.items() for step, _, argv in rungs]
    # Untimed rounds first: bytecode written, page cache warm.
    for counted in [False] * 2 + [True] * rounds:
        random.shuffle(everything)
        for name, step, argv in everything:
            wall, cpu = timed(argv, env, cwd)
            if counted:
                times[name][step].append(wall)
                times[name][CPU + step].append(cpu)
    return times


# The key prefix of a rung's CPU times (user + system) beside its wall times: on a
# machine shared with other work, CPU time varies far less than wall time.
CPU = "cpu:"


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system, from the child's rusage) of one run."""
    begin = time.perf_counter()
    process = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - begin
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, argv)
    return wall, usage.ru_utime + usage.ru_stime


def importtime(
    python: str, runs: int, env: dict[str, str], cwd: Path
) -> tuple[dict[str, float], dict[str, float]]:
    """Medians over runs of `python -X importtime`: the self time (seconds) of each module
    the status path imports beyond `-c pass`, and the cumulative time of each module
    `-c pass` imports itself (site with the .pth files' imports)."""
    selves: dict[str, list[float]] = defaultdict(list)
    started: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        for program, into, column in (("pass", started, 1), (IMPORTS, selves, 0)):
            done = subprocess.run(
                [python, "-X", "importtime", "-c", program],
                env=env,
                cwd=cwd,
                capture_output=True,
                text=True,
                check=True,
            )
            for line in done.stderr.splitlines():
                if not line.startswith("import time:") or "[us]" in line:
                    continue
                parts = [part.strip() for part in line[12:].split("|")]
                into[parts[2]].append(int(parts[column]) / 1e6)
    site = {name: statistics.median(v) for name, v in started.items()}
    return {n: statistics.median(v) for n, v in selves.items() if n not in site}, site


# Modules grouped by who imports them, for the table: a group's cost is what dropping its
# importer would save (given what the others import anyway).
GROUPS = (
    ("argparse (+ gettext)", ("argparse", "gettext")),
    ("socket (+ selectors, select, math)", ("_socket", "socket", "selectors", "select", "math")),
    ("json (+ decoder, scanner, encoder, _json)", ("json", "json.", "_json")),
    ("re (+ enum, functools, collections…): json and the console script need it", ()),
    ("struct (peer check)", ("struct", "_struct")),
    ("rbd's own modules", ("rbd",)),
)


def group_of(name: str) -> str:
    for label, prefixes in GROUPS[:3] + GROUPS[4:]:
        for prefix in prefixes:
            if name == prefix or (prefix.endswith(".") and name.startswith(prefix)):
                return label
            if prefix == "rbd" and name.startswith("rbd"):
                return label
    return GROUPS[3][0]


def suggest_round_trips(rbd: Rbd, crate: Path, count: int) -> list[float]:
    """Round trips of `suggest` as the client sends it, after one request that fills the
    probe's cache."""
    times = []
    with Connection.open(rbd.socket) as connection:
        connection.request(protocol.SUGGEST, path=str(crate))
        for _ in range(count):
            begin = time.perf_counter()
            reply = connection.request(protocol.SUGGEST, path=str(crate))
            times.append(time.perf_counter() - begin)
            if reply["project"] != str(crate):
                raise RuntimeError(f"suggest answered for {reply['project']}")
    return times


def measure(
    rounds: int, import_runs: int, suggests: int, against: str | None
) -> tuple[list[Rung], Measured, Measured | None, list[float]]:
    """The ladder's rungs, this checkout's measurements, against's (when asked) and the
    `suggest` round trips."""
    into = Path(tempfile.mkdtemp(prefix="rbd-startup-rev-", dir="/tmp")) if against else None
    try:
        ladders = {"": ladder(sys.executable, str(Path(sys.executable).parent / "rbd"))}
        if against is not None and into is not None:
            other = install_revision(against, into)
            ladders[against] = ladder(str(other.parent / "python"), str(other))
        with private_daemon("rbd-startup-") as (rbd, base):
            crate = make_crate(base / "crate", "startup")
            events = rbd.events()
            rbd.ok("start", cwd=crate)
            events.finished()
            env = {k: v for k, v in rbd.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
            times = run_ladders(ladders, rounds, env, crate)
            measured = {
                name: Measured(times[name], *importtime(rungs[1][2][0], import_runs, env, crate))
                for name, rungs in ladders.items()
            }
            round_trips = suggest_round_trips(rbd, crate, suggests)
    finally:
        if into is not None:
            remove_revision(into)
    return ladders[""], measured[""], measured[against] if against else None, round_trips


@dataclass(frozen=True)
class Measured:
    """One client's ladder: wall times per rung, and importtime's medians per module."""

    times: dict[str, list[float]]
    modules: dict[str, float]
    site: dict[str, float]

    def median(self, step: str) -> float:
        return statistics.median(self.times[step])


SITE_ROW = (
    "site's imports (-X importtime, cumulative, medians): site / of which _distutils_hack, "
    "setuptools' distutils-precedence.pth (rbd's own .pth is a path line: no import)"
)


def rows(
    rungs: list[Rung],
    ours: Measured,
    theirs: Measured | None,
    against: str | None,
    round_trips: list[float],
) -> list[Row]:
    def both(value: Callable[[Measured], str]) -> str:
        return value(ours) + (f" ({against}: {value(theirs)})" if theirs is not None else "")

    def step(name: str, since: str) -> Callable[[Measured], str]:
        def text(m: Measured) -> str:
            wall = (m.median(name) - m.median(since)) * 1000
            cpu = (m.median(CPU + name) - m.median(CPU + since)) * 1000
            return f"{wall:+.1f} ms, CPU {cpu:+.1f} ms"

        return text

    def total(name: str) -> Callable[[Measured], str]:
        return lambda m: f"{ms(m.median(name))}, CPU {ms(m.median(CPU + name))}"

    def site_imports(m: Measured) -> str:
        return f"{ms(m.site.get('site', 0))} / {ms(m.site.get('_distutils_hack', 0))}"

    def beyond_pass(m: Measured) -> str:
        # The client's whole exit, less the one `python -c pass` pays too.
        def exit_of(key: str) -> float:
            own = m.median(key + "exit") - m.median(key + "print")
            return (own - (m.median(key + "pass") - m.median(key + "site"))) * 1000

        return f"{exit_of(''):+.1f} ms, CPU {exit_of(CPU):+.1f} ms"

    runs = len(ours.times["site"])
    steps = {name: what for name, what, _ in rungs}
    result: list[Row] = [
        (f"`python -c pass` wall, median of {runs} (interleaved)", both(total("pass")), None, None),
        (f"  of which {steps['interpreter']}", both(total("interpreter")), None, None),
        (f"  + {steps['site']}", both(step("site", "interpreter")), None, None),
        (f"    {SITE_ROW}", both(site_imports), None, None),
        ("  + its exit", both(step("pass", "site")), None, None),
    ]
    # The chain's steps (each without the exit) and the exit beyond `python -c pass`'s
    # add up to `cli.main` minus `python -c pass`; -m and the console script each
    # replace that rung's `python -c`.
    chain = ["site", "imports", "parse", "connect", "request", "render", "print"]
    for previous, name in itertools.pairwise(chain):
        result.append((f"  + {steps[name]}", both(step(name, previous)), None, None))
    result.append(
        (f"  + {steps['exit']}, beyond `python -c pass`'s own", both(beyond_pass), None, None)
    )
    result.append(
        (
            "  = `python -c 'from rbd.client.cli import main; …main([\"status\"])'`",
            both(total("exit")),
            None,
            None,
        )
    )
    result.append(
        (
            f"  {steps['program']} (this checkout's `status`: os._exit once flushed): "
            "against the line above",
            both(step("program", "exit")),
            None,
            None,
        )
    )
    for name in ("-m", "script"):
        result.append(
            (
                f"  {steps[name]}: against main() as the program",
                both(step(name, "program")),
                None,
                None,
            )
        )

    def group(label: str) -> Callable[[Measured], str]:
        return lambda m: ms(sum(s for n, s in m.modules.items() if group_of(n) == label))

    for label, _ in GROUPS:
        result.append(
            (f"  imports (-X importtime, self, medians): {label}", both(group(label)), None, None)
        )
    top = sorted(ours.modules.items(), key=lambda item: -item[1])[:8]
    result.append(
        (
            "  imports: the 8 dearest modules (ms)",
            ", ".join(f"{name} {s * 1000:.2f}" for name, s in top),
            None,
            None,
        )
    )
    result.append((f"`rbd status` wall, median of {runs}", both(total("script")), None, None))
    ratio = ours.median("script") / ours.median("pass")
    result.append(
        (
            "ratio `rbd status` / `python -c pass`",
            both(lambda m: f"{m.median('script') / m.median('pass'):.2f}"),
            f"≤ {RATIO_GOAL}",
            ratio <= RATIO_GOAL,
        )
    )
    p50 = statistics.median(round_trips)
    result.append(
        (
            f"`suggest` round trip, warm probe, one connection, p50 of {len(round_trips)}",
            ms(p50),
            f"≤ {SUGGEST_GOAL_S * 1000:.0f} ms",
            p50 <= SUGGEST_GOAL_S,
        )
    )
    result.append(("`suggest` round trip, p90", ms(percentile(round_trips, 0.9)), None, None))
    return result


def run(quick: bool) -> list[Row]:
    """The figure-module interface (benchmarks/suite.py's): this checkout's client only."""
    rounds, import_runs, suggests = (3, 3, 20) if quick else (40, 15, 300)
    rungs, ours, _, round_trips = measure(rounds, import_runs, suggests, None)
    return rows(rungs, ours, None, None, round_trips)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=40, help="interleaved rounds (40)")
    parser.add_argument("--quick", action="store_true", help="3 rounds, a smoke test")
    parser.add_argument("--against", metavar="REV", help="also a git revision's client")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    rounds, import_runs, suggests = (3, 3, 20) if args.quick else (args.runs, 15, 300)
    try:
        rungs, ours, theirs, round_trips = measure(rounds, import_runs, suggests, args.against)
    finally:
        remove_shared_cache()
    report(
        "benchmarks/client_startup.py — `rbd status` start-up, step by step; `suggest` warm",
        rows(rungs, ours, theirs, args.against, round_trips),
        args.write and not args.quick,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
