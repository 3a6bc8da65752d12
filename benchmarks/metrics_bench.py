"""What Prometheus' textfile costs a build (rbd.daemon.export.metrics), and what it costs
a daemon that does not use it.

Run from the repository root after `.ci/setup`:

    .venv/bin/python benchmarks/metrics_bench.py [--quick] [--write]

Per build, in this process: counting a build_finished event of 60 units (what runs on
the event loop as the event arrives), rendering the file (also on the event loop) for
one project and for ten sharing it, and replacing the file (temp file, fsync, rename:
the worker thread's part) in a temp dir of /tmp. Then two private daemons, one watching
a tiny crate without `metrics_textfile` and one with it: their RSS once the first build
has ended, and whether the first imported the exporter at all. `--write` appends the
rows to benchmarks/RESULTS.md; `--quick` uses tiny repetition counts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    Row,
    percentile,
    private_daemon,
    remove_shared_cache,
    report,
    status_kb,
)
from rbd.contract import protocol  # noqa: E402
from rbd.daemon.export.metrics import (  # noqa: E402
    TextfileExporter,
    render,
    write_atomically,
)
from rbd.daemon.rpc.events import EventHub  # noqa: E402
from tests.conftest import make_crate  # noqa: E402

REPEATS, QUICK_REPEATS = 2000, 20
UNITS = 60
# Kinds and outcomes a busy project shows, so the file holds that many series.
SHAPES = [("edit", "success"), ("edit", "failure"), ("deps", "success"), ("full", "success")]


def event(project: str, n: int) -> dict[str, Any]:
    """A build_finished event of UNITS units from a pool of 150 crates."""
    kind, outcome = SHAPES[n % len(SHAPES)]
    phases: dict[str, float | None] = dict.fromkeys(protocol.PHASE_KEYS, 0.1)
    units = [
        {"name": f"crate{(n * 13 + i) % 150}", "fresh": False, "total_s": 0.01 * (i % 17 + 1)}
        for i in range(UNITS)
    ]
    build = {
        "kind": kind,
        "outcome": outcome,
        "wall_s": 0.2 + (n % 40) * 0.3,
        "units_rebuilt": UNITS,
        "phases": phases,
    }
    return {"event": protocol.BUILD_FINISHED, "project": project, "build": build, "units": units}


def timed(repeats: int, action: Callable[[int], object]) -> list[float]:
    times = []
    for n in range(repeats):
        start = time.perf_counter()
        action(n)
        times.append(time.perf_counter() - start)
    return times


def us(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5) * 1e6:.0f} µs, p99 {percentile(values, 0.99) * 1e6:.0f} µs"
    )


def per_build(repeats: int, directory: Path) -> list[Row]:
    exporter = TextfileExporter(EventHub(16))
    path = str(directory / "rbd.prom")
    ten = {f"/home/dev/project{i}": path for i in range(10)}
    exporter.follow(ten)
    # Histories to render: every shape of every project seen, crates ranked.
    for n in range(200):
        for project in ten:
            exporter.take(event(project, n))
    counting = timed(repeats, lambda n: exporter.take(event("/home/dev/project0", n)))
    one = {"/home/dev/project0": exporter.projects["/home/dev/project0"]}
    one_text = render(one)
    ten_text = render(exporter.projects)
    render_one = timed(repeats, lambda n: render(one))
    render_ten = timed(repeats, lambda n: render(exporter.projects))
    target = directory / "bench.prom"
    data = one_text.encode()
    writes = timed(repeats, lambda n: write_atomically(target, data))
    return [
        (f"count one build_finished of {UNITS} units (event loop)", us(counting), None, None),
        (
            f"render the file, 1 project ({len(one_text.splitlines())} lines, "
            f"{len(one_text) / 1024:.1f} KiB; event loop)",
            us(render_one),
            None,
            None,
        ),
        (
            f"render the file, 10 projects ({len(ten_text.splitlines())} lines, "
            f"{len(ten_text) / 1024:.1f} KiB; event loop)",
            us(render_ten),
            None,
            None,
        ),
        ("replace the 1-project file: temp, fsync, rename (worker thread)", us(writes), None, None),
    ]


def daemon_rss(directory: Path, textfile: Path | None) -> tuple[int, bool]:
    """A private daemon's RSS (kB) once its first build of a tiny crate has ended, and
    whether it started the exporter (its log says metrics_started)."""
    files = {"rbd.toml": f'metrics_textfile = "{textfile}"\n'} if textfile else {}
    with private_daemon("rbd-metrics-") as (rbd, base):
        crate = make_crate(base / "demo", files=files)
        events = rbd.events()
        rbd.ok("start", cwd=crate)
        events.finished()
        if textfile is not None:
            deadline = time.monotonic() + 30
            while not textfile.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
        rss = status_kb(rbd.daemon_pid(), "VmRSS")
        log = (base / "state" / "rbd" / "rbd.log").read_text(errors="replace").splitlines()
        started = any(json.loads(line).get("event") == "metrics_started" for line in log)
    return rss, started


def run(quick: bool) -> list[Row]:
    directory = Path(tempfile.mkdtemp(prefix="rbd-metrics-bench-", dir="/tmp"))
    try:
        rows = per_build(QUICK_REPEATS if quick else REPEATS, directory)
        without, started_without = daemon_rss(directory, None)
        with_it, started_with = daemon_rss(directory, directory / "daemon.prom")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    rows += [
        (
            "daemon without metrics_textfile: exporter imported or started",
            "yes" if started_without else "no",
            "no",
            not started_without,
        ),
        (
            "daemon RSS after its first build, without metrics_textfile",
            f"{without / 1024:.1f} MB",
            None,
            None,
        ),
        (
            "daemon RSS after its first build, with it (exporter started: "
            f"{'yes' if started_with else 'no'})",
            f"{with_it / 1024:.1f} MB ({(with_it - without) / 1024:+.1f} MB)",
            None,
            None,
        ),
    ]
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    try:
        report("benchmarks/metrics_bench.py (Prometheus textfile)", run(args.quick), args.write)
    finally:
        remove_shared_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
