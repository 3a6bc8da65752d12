"""Benchmarks of the daemon loop: save -> cargo spawned latency, and the client's startup.

Run from the repository root after `.ci/setup`:

    .venv/bin/python benchmarks/daemon_loop.py [--edits 50] [--runs 30] [--write]

It starts a private daemon (XDG dirs in a temp dir) on a tiny crate, so it
never touches a daemon you run. What it compares is interleaved, and it
prints medians and ratios; `--write` appends them to benchmarks/RESULTS.md
with the date, machine and toolchain.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rbd.contract import protocol  # noqa: E402
from tests.conftest import Rbd, make_crate  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def save_to_spawn(rbd: Rbd, crate: Path, edits: int) -> list[float]:
    """Seconds from a file write to cargo's spawn, per edit (cargo's own spawn time, from the
    daemon's build_started event, minus the write's time, both on the wall clock)."""
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    events.finished()
    latencies = []
    main = crate / "src" / "main.rs"
    for i in range(edits):
        text = f'fn main() {{ println!("{i}"); }}\n'
        written = time.time()
        main.write_text(text)
        started = events.wait_for(lambda e: e.get("event") == protocol.BUILD_STARTED)
        latencies.append(started["spawned_at"] - written)
        events.finished()
    return latencies


def client_startup(rbd: Rbd, runs: int) -> tuple[list[float], list[float]]:
    """Wall time of `rbd status` and of `python -c pass`, interleaved."""
    rbd_bin = str(Path(sys.executable).parent / "rbd")
    status: list[float] = []
    bare: list[float] = []
    for _ in range(runs):
        pairs = (([rbd_bin, "status"], status), ([sys.executable, "-c", "pass"], bare))
        for command, into in pairs:
            begin = time.perf_counter()
            subprocess.run(command, env=rbd.env, stdout=subprocess.DEVNULL, check=True)
            into.append(time.perf_counter() - begin)
    return status, bare


def toolchain() -> str:
    try:
        return subprocess.run(
            ["rustc", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "rustc unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="rbd-bench-", dir="/tmp"))
    rbd = Rbd(base)
    try:
        crate = make_crate(base / "demo")
        rbd.start_daemon()
        latencies = save_to_spawn(rbd, crate, args.edits)
        status, bare = client_startup(rbd, args.runs)
    finally:
        rbd.close()
        shutil.rmtree(base, ignore_errors=True)

    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    ratio = statistics.median(status) / statistics.median(bare)
    report(
        "benchmarks/daemon_loop.py",
        [
            (
                f"save → cargo spawned, p50 over {len(latencies)} edits (default settle)",
                f"{p50 * 1000:.1f} ms",
                "≤ 50 ms",
                p50 <= 0.050,
            ),
            ("save → cargo spawned, p99", f"{p99 * 1000:.1f} ms", None, None),
            (
                f"`rbd status` wall, median of {len(status)}",
                f"{statistics.median(status) * 1000:.1f} ms",
                None,
                None,
            ),
            (
                f"`python -c pass` wall, median of {len(bare)} (interleaved)",
                f"{statistics.median(bare) * 1000:.1f} ms",
                None,
                None,
            ),
            ("ratio `rbd status` / `python -c pass`", f"{ratio:.2f}", "≤ 1.25", ratio <= 1.25),
        ],
        args.write,
    )
    return 0


Row = tuple[str, str, str | None, bool | None]


def report(script: str, rows: list[Row], write: bool) -> None:
    """Print the measured rows against their goals; with write, append them to RESULTS.md."""
    lines = [heading(), "", "| measure | value | goal | met |", "|---|---|---|---|"]
    for measure, value, goal, met in rows:
        verdict = "—" if met is None else ("yes" if met else "MISSED")
        lines.append(f"| {measure} | {value} | {goal or '—'} | {verdict} |")
    lines.append("")
    print("\n".join(lines))
    if write:
        append_results(script, lines)


def heading() -> str:
    return (
        f"### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — {platform.node()}, {os.cpu_count()} cores, "
        f"{platform.python_implementation()} {platform.python_version()}, {toolchain()}"
    )


def append_results(script: str, lines: list[str]) -> None:
    results = ROOT / "benchmarks" / "RESULTS.md"
    if not results.exists():
        results.write_text("# Benchmark results\n\nNewest last, by the script named.\n\n")
    with results.open("a") as f:
        f.write(f"## {script}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
