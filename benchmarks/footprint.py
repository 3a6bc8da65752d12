"""Figure 7 — the daemon's footprint at rest while it watches a big tree: memory and CPU.

Run from the repository root after `.ci/setup`:

    .venv/bin/python benchmarks/footprint.py [--quick] [--write]

A crate holds 20,000 extra files (src/assets/dNNN/fNNNN.txt, 200 directories
of 100 files: watched, as everything under src/ is, but no build trigger). A
private daemon is started on it; once its first build is over, its RSS and
CPU time are read from /proc over 30 s of doing nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
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
    status_kb,
)
from tests.conftest import make_crate  # noqa: E402

DIRS, PER_DIR = 200, 100
QUICK_DIRS, QUICK_PER_DIR = 2, 100
IDLE_S = 30.0
QUICK_IDLE_S = 1.0
# How often RSS is sampled during the idle window (its peak is VmHWM anyway).
SAMPLE_S = 1.0
RSS_GOAL_MB = 60.0
CPU_GOAL_PCT = 1.0


def make_tree(root: Path, dirs: int, per_dir: int) -> int:
    for d in range(dirs):
        directory = root / f"d{d:03d}"
        directory.mkdir(parents=True)
        for f in range(per_dir):
            (directory / f"f{f:04d}.txt").write_text(f"asset {d} {f}\n")
    return dirs * per_dir


def run(quick: bool) -> list[Row]:
    dirs, per_dir = (QUICK_DIRS, QUICK_PER_DIR) if quick else (DIRS, PER_DIR)
    idle_s = QUICK_IDLE_S if quick else IDLE_S
    with private_daemon("rbd-footprint-") as (rbd, base):
        crate = make_crate(base / "big")
        files = make_tree(crate / "src" / "assets", dirs, per_dir)
        pid = rbd.daemon_pid()
        rss_fresh = status_kb(pid, "VmRSS")
        events = rbd.events()
        begin = time.monotonic()
        rbd.ok("start", cwd=crate)
        events.finished()
        ready_s = time.monotonic() - begin
        cpu_before = cpu_seconds(pid)
        rss_samples = [status_kb(pid, "VmRSS")]
        begin = time.monotonic()
        # Sampling RSS once a second doubles as the wait: any build_started in
        # the window (there should be none) is counted too.
        started = 0
        while (left := idle_s - (time.monotonic() - begin)) > 0:
            started += count_builds(events, min(SAMPLE_S, left)).started
            rss_samples.append(status_kb(pid, "VmRSS"))
        window = time.monotonic() - begin
        cpu = cpu_seconds(pid) - cpu_before
        hwm = status_kb(pid, "VmHWM")
    rss_mb = max(rss_samples) / 1024
    pct = 100 * cpu / window
    return [
        (
            f"`rbd start` → first build done, {files} extra files in the tree",
            f"{ready_s:.2f} s",
            None,
            None,
        ),
        ("daemon RSS before watching anything", f"{rss_fresh / 1024:.1f} MB", None, None),
        (
            f"daemon RSS at rest, watching it (max of {len(rss_samples)} samples over "
            f"{window:.0f} s)",
            f"{rss_mb:.1f} MB",
            f"≤ {RSS_GOAL_MB:g} MB",
            rss_mb <= RSS_GOAL_MB,
        ),
        ("daemon peak RSS so far (VmHWM)", f"{hwm / 1024:.1f} MB", None, None),
        (
            f"daemon CPU at rest over {window:.1f} s (/proc ticks, 10 ms resolution)",
            f"{cpu * 1000:.0f} ms = {pct:.2f}% of one core",
            f"≤ {CPU_GOAL_PCT:g}% of one core",
            pct <= CPU_GOAL_PCT,
        ),
        ("builds started while at rest", str(started), "0", started == 0),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    try:
        report("benchmarks/footprint.py (figure 7)", run(args.quick), args.write)
    finally:
        remove_shared_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
