"""rbd's performance suite: figures 1 to 9, 11 and 12, one report each.

Run from the repository root after `.ci/setup`:

    .venv/bin/python benchmarks/suite.py [--quick] [--write] [--only 1,2,...]

1. save → cargo spawned, interleaved with cargo-watch, bacon and watchexec when
   installed (PATH, ~/.cache/rbd-bench/peers/bin); builds per editor save pattern
   (loop_figures.figure1)
2. a storm of 2,000 changed files: one build; writes under target/: none, no CPU
   burn (storm)
3. cancelling an outdated build: old processes gone, new cargo spawned; no
   orphans (cancel)
4. rbd's instrumented rebuild against plain `cargo build` (loop_figures.figure4,
   over overhead)
5. socket round trips at 200 requests/s (store_bench); the client's start-up
   (loop_figures.figure5_client, over daemon_loop)
6. `history` and `suggest` over a store of 100,000 builds (store_bench)
7. the daemon at rest watching a 20,000-file tree: RSS, CPU (footprint)
8. the outcome on the reference web app: defaults vs `rbd tune apply` of the top
   suggestions vs the best `rbd bench` configuration (outcome)
9. how rbd's and the build's costs grow with a synthetic workspace of 10, 50 and
   200 crates (scaling)
11. what the phases leave unexplained (`other_s / wall_s`) on the web app's clean,
    profile-change and dependency-bump builds and on clean builds of the synthetic
    workspaces (accounting)
12. a planted slowdown (a proc-macro dependency added before edit 20 of 40): found
    at that edit and named by `rbd history --changes` (slowdown)

(Figure 10, run mode beside its peers, is benchmarks/serve_loop.py on its own.)

A figure that needs a daemon runs a private one (XDG dirs in a temp dir), never
one you run. `--quick` runs tiny sizes once each (a smoke test, seconds per
figure: the numbers mean nothing, and `--write` is ignored with it); `--write`
appends each figure's report to benchmarks/RESULTS.md.
A figure whose module is missing is skipped with a message; one that fails is
reported and the others still run (the exit status is then 1).

store_bench measures figures 5 and 6 in one run (one daemon, one filled
store): its rows are reported under the first of the two selected.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.daemon_loop import Row, report  # noqa: E402


@dataclass(frozen=True)
class Part:
    """One measurement of a figure: module.function(quick) -> rows."""

    module: str
    function: str = "run"


@dataclass(frozen=True)
class Figure:
    number: int
    title: str
    parts: tuple[Part, ...]


FIGURES = (
    Figure(1, "save → cargo spawned", (Part("benchmarks.loop_figures", "figure1"),)),
    Figure(2, "a storm of file changes", (Part("benchmarks.storm"),)),
    Figure(3, "cancelling an outdated build", (Part("benchmarks.cancel"),)),
    Figure(4, "instrumented vs plain rebuild", (Part("benchmarks.loop_figures", "figure4"),)),
    Figure(
        5,
        "answers under load, the client's start-up (store_bench: also figure 6)",
        (Part("benchmarks.store_bench"), Part("benchmarks.loop_figures", "figure5_client")),
    ),
    Figure(
        6, "history and suggest over a big store (store_bench)", (Part("benchmarks.store_bench"),)
    ),
    Figure(7, "footprint at rest on a big tree", (Part("benchmarks.footprint"),)),
    Figure(8, "the outcome of suggest and tune on the web app", (Part("benchmarks.outcome"),)),
    Figure(9, "costs by project size", (Part("benchmarks.scaling"),)),
    Figure(11, "every second of a build accounted for", (Part("benchmarks.accounting"),)),
    Figure(12, "a planted slowdown found and named", (Part("benchmarks.slowdown"),)),
)


class Skipped(Exception):
    """The module of a figure is not there (yet)."""


def load(part: Part) -> Callable[[bool], list[Row]]:
    # Imported only when its figure runs: a missing module skips that figure
    # alone, and `--only 2` does not pay for the imports of the others.
    try:
        module = importlib.import_module(part.module)
    except ModuleNotFoundError as exc:
        if exc.name != part.module:
            raise  # the module is there but something it imports is not
        raise Skipped(f"{part.module} is missing") from None
    function: Callable[[bool], list[Row]] = getattr(module, part.function)
    return function


def run_figure(figure: Figure, quick: bool, ran: dict[Part, int]) -> tuple[list[Row], list[str]]:
    """The figure's rows and notes on the parts not run (a missing module; a part an
    earlier figure ran and reported, as store_bench's for figures 5 and 6)."""
    rows: list[Row] = []
    notes: list[str] = []
    for part in figure.parts:
        if part in ran:
            notes.append(f"{part.module}'s rows are in figure {ran[part]}'s report above")
            continue
        try:
            function = load(part)
        except Skipped as exc:
            notes.append(f"skipped: {exc}")
            continue
        rows += function(quick)
        ran[part] = figure.number
    return rows, notes


def parse_only(text: str | None) -> list[int]:
    known = [figure.number for figure in FIGURES]
    if text is None:
        return known
    try:
        wanted = {int(word) for word in text.split(",") if word.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--only takes figure numbers, e.g. 2,3,7: {text!r}"
        ) from None
    unknown = wanted - set(known)
    if unknown:
        raise argparse.ArgumentTypeError(f"no figure {sorted(unknown)}; figures are {known}")
    return [n for n in known if n in wanted]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    parser.add_argument("--only", metavar="N,N,...", help="only these figures (default: all)")
    args = parser.parse_args(argv)
    try:
        selected = parse_only(args.only)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    write = args.write
    if args.quick and write:
        # Quick numbers are a smoke test's, never results.
        print("--write is ignored with --quick: nothing is appended to RESULTS.md\n")
        write = False
    failed = []
    ran: dict[Part, int] = {}
    for figure in FIGURES:
        if figure.number not in selected:
            continue
        name = f"benchmarks/suite.py — figure {figure.number}: {figure.title}"
        print(f"## {name}{' (quick)' if args.quick else ''}\n", flush=True)
        begin = time.monotonic()
        try:
            rows, notes = run_figure(figure, args.quick, ran)
        except Exception:
            traceback.print_exc()
            print(f"figure {figure.number} FAILED (see above)\n", flush=True)
            failed.append(figure.number)
            continue
        for note in notes:
            print(f"figure {figure.number}: {note}", flush=True)
        if rows:
            report(name, rows, write)
        else:
            print(f"figure {figure.number}: no rows of its own\n", flush=True)
        print(f"(figure {figure.number} took {time.monotonic() - begin:.1f} s)\n", flush=True)
    if failed:
        print(f"failed figures: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        status = main()
    finally:
        # Imported here: the figures import tests.conftest (which makes it), not this.
        from benchmarks.common import remove_shared_cache

        remove_shared_cache()
    raise SystemExit(status)
