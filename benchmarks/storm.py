"""Figure 2 — a storm of file changes: one build for a burst, none and no CPU burn for
writes under target/.

Run from the repository root after `.ci/setup`:

    .venv/bin/python benchmarks/storm.py [--quick] [--write]

A private daemon watches a tiny crate. After its first build, 2,000 new `.rs`
files are written under `src/gen/` (outside the module tree, so the build
still succeeds) — once as fast as Python writes them (a `git checkout`), once
spread evenly over 1 s (a burst that never pauses for the settle time) — and
the builds that start are counted until the daemon has been idle for a while.
Then 2,000 files are written under `target/`, which must start no build and
cost the daemon next to no CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Row,
    count_builds,
    cpu_seconds,
    private_daemon,
    remove_shared_cache,
    report,
)
from rbd.daemon.watch.scheduler import STORM_QUIET_S  # noqa: E402
from rbd.daemon.watch.watcher import WATCH_DEBOUNCE_MS  # noqa: E402
from tests.conftest import make_crate  # noqa: E402

FILES = 2000
QUICK_FILES = 100
# The window after the target/ writes over which the daemon's CPU is measured.
AFTER_S = 2.0
QUICK_AFTER_S = 0.5
CPU_GOAL_PCT = 5.0


def write_files(directory: Path, count: int, spread_s: float) -> float:
    """Write count small .rs files into directory, spread evenly over spread_s seconds
    (0: as fast as possible); returns how long the writing took."""
    directory.mkdir(parents=True, exist_ok=True)
    begin = time.monotonic()
    # Batches of 20: sleeping per file would be at the mercy of the timer's
    # granularity; 20 files take well under a millisecond to write.
    batch = 20
    for first in range(0, count, batch):
        if spread_s:
            due = begin + spread_s * first / count
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        for i in range(first, min(first + batch, count)):
            (directory / f"f{i:04d}.rs").write_text(f"pub const N{i}: u32 = {i};\n")
    return time.monotonic() - begin


def run(quick: bool) -> list[Row]:
    files = QUICK_FILES if quick else FILES
    after_s = QUICK_AFTER_S if quick else AFTER_S
    rows: list[Row] = []
    with private_daemon("rbd-storm-") as (rbd, base):
        crate = make_crate(base / "storm")
        events = rbd.events()
        rbd.ok("start", cwd=crate)
        events.finished()
        settle_s = rbd.request("status")["projects"][0]["config"]["settle_ms"] / 1000
        # The daemon's own idea of "the burst is over" is its settle time (a storm's
        # longer one) after the watcher's last batch, and the watcher hands a
        # never-pausing burst over every WATCH_DEBOUNCE_MS: idle means three of those
        # with no build starting.
        quiet_s = 3 * (max(settle_s, STORM_QUIET_S) + WATCH_DEBOUNCE_MS / 1000)

        # Quick mode writes fewer files at the same rate (2,000 a second).
        spread = files / FILES
        for label, directory, spread_s in (
            ("as fast as possible", "fast", 0.0),
            (f"spread evenly over {spread:g} s", "spread", spread),
        ):
            took = write_files(crate / "src" / "gen" / directory, files, spread_s)
            builds = count_builds(events, quiet_s)
            outcomes = ", ".join(
                f"{n} {outcome}" for outcome, n in Counter(builds.outcomes).most_common()
            )
            rows.append(
                (
                    f"builds started for {files} new .rs files written {label} "
                    f"(in {took:.2f} s; idle {quiet_s:.2f} s after) — {outcomes or 'no builds'}",
                    str(builds.started),
                    "exactly 1",
                    builds.started == 1,
                )
            )

        pid = rbd.daemon_pid()
        cpu_before = cpu_seconds(pid)
        begin = time.monotonic()
        took = write_files(crate / "target" / "junk", files, 0.0)
        # The CPU window is the writing and the AFTER_S after it: whatever the
        # daemon does about those writes, it does then.
        builds = count_builds(events, after_s)
        cpu = cpu_seconds(pid) - cpu_before
        window = time.monotonic() - begin
        rows.append(
            (
                f"builds started for {files} files written under target/ (in {took:.2f} s)",
                str(builds.started),
                "0",
                builds.started == 0,
            )
        )
        pct = 100 * cpu / window
        rows.append(
            (
                f"daemon CPU during those writes and the {after_s:g} s after "
                f"({window:.2f} s window; /proc ticks, 10 ms resolution)",
                f"{cpu * 1000:.0f} ms = {pct:.1f}% of one core",
                f"≤ {CPU_GOAL_PCT:g}% of one core",
                pct <= CPU_GOAL_PCT,
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    try:
        report("benchmarks/storm.py (figure 2)", run(args.quick), args.write)
    finally:
        remove_shared_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
