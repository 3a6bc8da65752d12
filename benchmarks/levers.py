"""The newer levers against cargo's defaults: `wild`, `split-debuginfo` and
`parallel-frontend` (nightly -Zthreads=<cores>) beside `default`, measured by
`rbd bench --foreground` (interleaved runs, medians) on a copy of benchmarks/webapp and
on a 50-crate workspace of benchmarks/synth.py, incremental (an edit of one source file)
and clean (`cargo clean` first).

    .venv/bin/python benchmarks/levers.py [--quick] [--runs 3] [--warmup 1]
        [--webapp-clean] [--write]

Per project and mode: each configuration's median, σ, the median's ratio to default's
(below 1: faster), and the median run's compile (frontend + codegen on the critical path)
and link; a configuration this machine lacks is listed with rbd's reason.
parallel-frontend builds with the nightly, default with the stable toolchain: its ratio
is that of both changes. Clean builds of the web app are left out unless
--webapp-clean (each is a full build of its ~80 dependencies, 16-35 s here). --quick: a
tiny crate, one run each, incremental only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import synth
from benchmarks.common import ROOT, Row, remove_shared_cache, report
from tests.conftest import Rbd, make_crate

WEBAPP = ROOT / "benchmarks" / "webapp"
WEBAPP_EDIT = "src/routes/users.rs"
CONFIGS = ("default", "wild", "split-debuginfo", "parallel-frontend")
SYNTH_CRATES = 50
# The synthetic workspace's edit: the crate most others depend on (synth's docstring),
# so an edit rebuilds much of the graph, frontends included, and then links the app.
SYNTH_EDITED = "c000"
BENCH_TIMEOUT_S = 4 * 3600.0


def bench(
    rbd: Rbd, project: Path, modes: list[str], edit: str, runs: int, warmup: int
) -> dict[str, Any]:
    """`rbd bench --foreground --json` of CONFIGS in project: its report."""
    args = ["bench", "--foreground", "--json", "--configs", ",".join(CONFIGS)]
    args += [f"--{mode}" for mode in modes]
    args += ["--runs", str(runs), "--warmup", str(warmup), "--edit", edit]
    done = rbd.run(*args, cwd=project, timeout=BENCH_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds * 1000:.0f} ms"


def rows_of(label: str, report: dict[str, Any]) -> list[Row]:
    """One row per configuration and mode: median ± σ, ratio to default, compile, link."""
    results = report["results"]
    base = {
        r["mode"]: r["median_s"]
        for r in results
        if r["config"] == report.get("baseline", "default") and r["median_s"]
    }
    rows: list[Row] = []
    for r in results:
        what = f"{label}, {r['mode']}: {r['config']}"
        if r["median_s"] is None:
            rows.append((what, f"not run: {r.get('reason')}", None, None))
            continue
        phases = r.get("phases") or {}
        ratio = r["median_s"] / base[r["mode"]] if base.get(r["mode"]) else None
        value = (
            f"median {_ms(r['median_s'])} (σ {_ms(r['stddev_s'])}, {len(r['runs_s'])} runs)"
            + ("" if ratio is None else f"; ×{ratio:.2f} of default")
            + f"; compile {_ms(phases.get('compile_s'))}, link {_ms(phases.get('link_s'))}"
        )
        rows.append((what, value, None, None))
    return rows


def run(quick: bool, runs: int, warmup: int, webapp_clean: bool) -> list[Row]:
    base = Path(tempfile.mkdtemp(prefix="rbd-levers-", dir="/tmp"))
    rbd = Rbd(base)
    rows: list[Row] = []
    started = time.monotonic()
    try:
        if quick:
            crate = make_crate(base / "demo")
            return rows_of("tiny crate", bench(rbd, crate, ["incremental"], "src/main.rs", 1, 0))
        webapp = base / "webapp"
        shutil.copytree(WEBAPP, webapp, ignore=shutil.ignore_patterns("target"))
        modes = ["incremental", "clean"] if webapp_clean else ["incremental"]
        rows += rows_of("benchmarks/webapp", bench(rbd, webapp, modes, WEBAPP_EDIT, runs, warmup))
        workspace = synth.generate(base / "synth", SYNTH_CRATES)
        edited = synth.source_of(workspace, SYNTH_EDITED).relative_to(workspace)
        rows += rows_of(
            f"synth {SYNTH_CRATES} crates (edit {SYNTH_EDITED})",
            bench(rbd, workspace, ["incremental", "clean"], str(edited), runs, warmup),
        )
    finally:
        rbd.close()
        shutil.rmtree(base, ignore_errors=True)
        remove_shared_cache()
    minutes = (time.monotonic() - started) / 60
    setup = (
        f"{runs} runs after {warmup} warm-up per configuration and mode, interleaved; "
        f"clean on {'both' if webapp_clean else 'the synthetic workspace only'}; "
        f"{minutes:.0f} min in all"
    )
    return [("method", setup, None, None), *rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny crate, one run each")
    parser.add_argument("--runs", type=int, default=3, help="counted runs (3)")
    parser.add_argument("--warmup", type=int, default=1, help="warm-up runs (1)")
    parser.add_argument("--webapp-clean", action="store_true", help="clean builds of webapp too")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    rows = run(args.quick, args.runs, args.warmup, args.webapp_clean)
    report("benchmarks/levers.py", rows, args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
