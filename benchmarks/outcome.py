"""Figure 8, the outcome: is the reference web app's edit-rebuild faster after
`rbd bench`, `rbd suggest` and `rbd tune apply`, and by how much?

On a copy of benchmarks/webapp (its own target dir) a private daemon watches the app:
1. the incremental rebuild with cargo's defaults, median over the daemon's own builds
   after one-line edits of a handler (a string literal, as `rbd bench` edits);
2. `rbd bench --incremental` of the configurations rbd can build here;
3. `rbd suggest`, then `rbd tune apply` of its top suggestions that tune can apply;
4. the same rebuild again, after the tune.
Goals: (1) / (4) ≥ 2.5, and (4) within 10% of the best configuration of (2).

    .venv/bin/python benchmarks/outcome.py [--quick] [--write]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, Row, private_daemon, report
from rbd.daemon.bench import source
from tests.conftest import Events, make_crate

WEBAPP = ROOT / "benchmarks" / "webapp"
EDITED = "src/routes/users.rs"
CONFIGS = "default,line-tables-only,no-debuginfo,mold,lld,mold+no-debuginfo"
FULL_BUILD_S = 900.0
TOP = 3


def edit_rebuilds(events: Events, file: Path, count: int, first: int) -> list[float]:
    """Wall times of the daemon's rebuilds after count edits of file."""
    original = file.read_text()
    edit = source.plan_edit(original)
    walls = []
    for n in range(first, first + count):
        file.write_text(edit.apply(original, n))
        build = events.finished(timeout=FULL_BUILD_S)
        assert build["outcome"] == "success", build
        walls.append(float(build["wall_s"]))
    file.write_text(original)
    events.finished(timeout=FULL_BUILD_S)
    return walls


def run(quick: bool) -> list[Row]:
    edits = 1 if quick else 8
    with private_daemon("rbd-outcome-") as (rbd, base):
        if quick:
            app, edited = make_crate(base / "app"), "src/main.rs"
            configs, runs = "default,line-tables-only", "1"
        else:
            app, edited, configs, runs = base / "webapp", EDITED, CONFIGS, "5"
            shutil.copytree(WEBAPP, app, ignore=shutil.ignore_patterns("target"))
        events = rbd.events()
        rbd.ok("start", cwd=app)
        events.finished(timeout=FULL_BUILD_S)
        file = app / edited
        # The first edit's rebuild also warms caches: not counted.
        before = edit_rebuilds(events, file, edits + 1, 1)[1:]

        done = rbd.run(
            "bench", "--json", "--incremental", "--configs", configs, "--runs", runs,
            "--warmup", "1", "--edit", edited, cwd=app, timeout=3600,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        bench = json.loads(done.stdout)
        measured = [r for r in bench["results"] if r["median_s"] is not None]
        best = min(measured, key=lambda r: r["median_s"])

        suggested = json.loads(rbd.ok("suggest", "--json", cwd=app))
        applicable = [
            s
            for s in suggested["suggestions"]
            if "manual" not in s["change"] and not s["needs_nightly"]
        ]
        ids = [s["id"] for s in applicable[:TOP]]
        if ids:
            rbd.ok("tune", "apply", *ids, cwd=app)
            events.finished(timeout=FULL_BUILD_S)  # the tuned profile rebuilds everything
        after = edit_rebuilds(events, file, edits + 1, 100)[1:]

    b, a = statistics.median(before), statistics.median(after)
    ratio, gap = b / a, a / best["median_s"]
    project = "tiny crate (quick)" if quick else "benchmarks/webapp (axum, tokio, serde)"
    return [
        (f"project; edit of {edited}", project, None, None),
        (f"rebuild with cargo defaults, median of {len(before)}", f"{b * 1000:.0f} ms", None, None),
        ("suggestions applied (`rbd tune apply`)", ", ".join(ids) or "none", None, None),
        (f"rebuild after the tune, median of {len(after)}", f"{a * 1000:.0f} ms", None, None),
        ("speed-up defaults / tuned", f"{ratio:.2f}x", "≥ 2.5x", ratio >= 2.5),
        (
            f"best of `rbd bench` ({len(measured)} configurations, {runs} runs each)",
            f"{best['config']}: {best['median_s'] * 1000:.0f} ms",
            None,
            None,
        ),
        ("tuned / best bench configuration", f"{gap:.2f}", "≤ 1.10", gap <= 1.10),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny crate, one run each")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    report("benchmarks/outcome.py", run(args.quick), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
