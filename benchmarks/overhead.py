"""Benchmark: rbd's instrumented rebuild against a plain `cargo build` of the same edit.

Run from the repository root after `.ci/setup`:

    .venv/bin/python benchmarks/overhead.py [--edits 15] [--write]

Three copies of the bundled example project get the same one-line edits,
A B C A B C ...: copy A is rebuilt by rbd's builder as the daemon runs it
(the exact command, environment and output parsing, its rustc wrapper and
linker shim, timings report analysis and linker check), copy B the same
without the shim (to show what the shim costs), copy C by plain `cargo
build`. Each side is timed from before
cargo's spawn to the end of what that side does with the result. Medians and
their ratio are printed; `--write` appends them to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import anyio.to_thread

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.daemon_loop import Row, report  # noqa: E402
from rbd.contract import paths  # noqa: E402
from rbd.daemon.build.builder import Build  # noqa: E402
from rbd.daemon.build.report import cargo_version  # noqa: E402
from rbd.daemon.build.shim import Shim, Shims  # noqa: E402
from rbd.daemon.projects.settings import ProjectConfig  # noqa: E402

HANDLERS = Path("src") / "handlers.rs"


def edit(copy: Path, i: int) -> None:
    path = copy / HANDLERS
    text = path.read_text()
    start = text.index('let greeting = "') + len('let greeting = "')
    end = text.index('"', start)
    path.write_text(text[:start] + f"Hello {i}" + text[end:])


async def rbd_build(copy: Path, version: tuple[int, int] | None, shim: Shim | None) -> float:
    build = Build(
        ProjectConfig().argv(), copy, dict(os.environ), 600, lambda _: None, version, shim=shim
    )
    begin = time.perf_counter()
    result = await build.run()
    assert result.outcome == "success", result.first_error
    return time.perf_counter() - begin


def plain_build(copy: Path) -> float:
    begin = time.perf_counter()
    subprocess.run(["cargo", "build"], cwd=copy, check=True, capture_output=True)
    return time.perf_counter() - begin


GOAL = 1.03
SIDES = ("rbd", "noshim", "plain")


def measure(edits: int, warmup: int = 2) -> dict[str, list[float]]:
    """Each side's timed rebuilds over the same edits, interleaved; warm-ups uncounted."""
    version = cargo_version(
        subprocess.run(["cargo", "--version"], capture_output=True, text=True, check=True).stdout
    )
    timed: dict[str, list[float]] = {side: [] for side in SIDES}
    base = Path(tempfile.mkdtemp(prefix="rbd-overhead-"))
    try:
        copies = {}
        for side in SIDES:
            copies[side] = base / side
            shutil.copytree(ROOT / "benchmarks" / "example", copies[side])
            subprocess.run(["cargo", "build", "-q"], cwd=copies[side], check=True)

        async def rounds() -> None:
            # One event loop for all rounds, as in the daemon.
            shim = await Shims(Path(paths.cache_dir())).get(dict(os.environ))
            assert shim is not None, "the shim did not build (see the warning above)"
            for i in range(edits + warmup):
                for side in SIDES:
                    edit(copies[side], i)
                    if side != "plain":
                        took = await rbd_build(
                            copies[side], version, shim if side == "rbd" else None
                        )
                    else:
                        took = await anyio.to_thread.run_sync(plain_build, copies[side])
                    if i >= warmup:
                        timed[side].append(took)

        anyio.run(rounds)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return timed


def rows(timed: dict[str, list[float]]) -> list[Row]:
    rbd, plain = statistics.median(timed["rbd"]), statistics.median(timed["plain"])
    noshim = statistics.median(timed["noshim"])
    ratio = rbd / plain
    return [
        (
            f"rbd-instrumented rebuild, median of {len(timed['rbd'])}",
            f"{rbd * 1000:.1f} ms",
            None,
            None,
        ),
        ("the same without rbd's shim (no link times)", f"{noshim * 1000:.1f} ms", None, None),
        ("plain `cargo build`, same edits, interleaved", f"{plain * 1000:.1f} ms", None, None),
        (
            "ratio rbd / plain (example project, one-line edit)",
            f"{ratio:.3f}",
            f"≤ {GOAL}",
            ratio <= GOAL,
        ),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=15)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    report("benchmarks/overhead.py", rows(measure(args.edits)), args.write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
