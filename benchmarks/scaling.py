"""Figure 9 — how rbd's costs and the build's costs grow with project size.

Synthetic workspaces of 10, 50 and 200 crates (benchmarks/synth.py) are watched in
turn by a private daemon. Per size: the watch set, the daemon's RSS, the first (full)
build, and the rebuilds after editing the bin and a leaf crate everything depends on;
for those rebuilds also rbd's share (save → cargo spawned) and cargo's own fixed cost
(the overhead phase: cargo's time before its first unit starts, fingerprinting and
resolving, which grows with the number of crates).

    .venv/bin/python benchmarks/scaling.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import synth
from benchmarks.common import Row, private_daemon, report, status_kb
from tests.conftest import Events

SIZES = (10, 50, 200)
EDITS = 3
FULL_BUILD_S = 900.0


def rebuilds(events: Events, root: Path, crate: str, edits: int, first: int) -> list[dict]:  # type: ignore[type-arg]
    """The build summaries after edits of crate, and each save → spawn latency."""
    out = []
    for n in range(first, first + edits):
        written = time.time()
        synth.edit(root, crate, n)
        started = events.wait_for(lambda e: e.get("event") == "build_started", FULL_BUILD_S)
        build = events.finished(timeout=FULL_BUILD_S)
        assert build["outcome"] == "success", build
        out.append({**build, "latency_s": started["spawned_at"] - written})
    return out


def median_of(builds: list[dict], key: str) -> float:  # type: ignore[type-arg]
    """Median of a summary key (wall_s, latency_s) or, failing that, of a phase."""
    return float(statistics.median(b[key] if key in b else b["phases"][key] for b in builds))


def run(quick: bool) -> list[Row]:
    sizes, edits = ((3,), 1) if quick else (SIZES, EDITS)
    rows: list[Row] = []
    for size in sizes:
        with private_daemon("rbd-scale-") as (rbd, base):
            root = synth.generate(base / f"ws{size}", size)
            events = rbd.events()
            begin = time.monotonic()
            rbd.ok("start", cwd=root)
            first = events.finished(timeout=FULL_BUILD_S)
            full_s = time.monotonic() - begin
            rss_mb = status_kb(rbd.daemon_pid(), "VmRSS") / 1024
            app = rebuilds(events, root, "app", edits, 1)
            leaf = rebuilds(events, root, synth.crate_name(0, size), edits, 1)
        label = f"{size} crates"
        rows += [
            (
                f"{label}: first build (rbd start → finished; cargo wall {first['wall_s']:.1f} s)",
                f"{full_s:.1f} s",
                None,
                None,
            ),
            (f"{label}: daemon RSS watching it", f"{rss_mb:.1f} MB", "≤ 60 MB", rss_mb <= 60),
            (
                f"{label}: rebuild after editing the bin, median of {edits}",
                f"{median_of(app, 'wall_s') * 1000:.0f} ms "
                f"(save → spawn {median_of(app, 'latency_s') * 1000:.0f} ms, "
                f"cargo overhead {median_of(app, 'overhead_s') * 1000:.0f} ms)",
                None,
                None,
            ),
            (
                f"{label}: rebuild after editing the leaf crate, median of {edits} "
                f"({leaf[0]['units_rebuilt']} units rebuilt)",
                f"{median_of(leaf, 'wall_s') * 1000:.0f} ms "
                f"(save → spawn {median_of(leaf, 'latency_s') * 1000:.0f} ms, "
                f"cargo overhead {median_of(leaf, 'overhead_s') * 1000:.0f} ms)",
                None,
                None,
            ),
        ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 crates, one edit each")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    report("benchmarks/scaling.py", run(args.quick), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
