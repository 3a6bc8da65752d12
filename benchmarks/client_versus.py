"""The client's start-up against another revision's: did a change make `rbd status` slower?

Run from the repository root after `.ci/setup`:

    .venv/bin/python benchmarks/client_versus.py [--against REV] [--runs 40] [--write]

It checks REV out into a temporary git worktree, installs it into a venv of its
own (the dependencies come from this checkout's venv through a
.pth line; the install is editable in setuptools' strict mode, as `.ci/setup`
does, and byte-compiled once), starts one private daemon of this checkout (XDG
dirs in a temp dir) and times three commands, interleaved in a fresh random
order each round: `python -c pass`, this checkout's `rbd status` and REV's
`rbd status`. Both clients speak protocol 1 to the same daemon, so what differs
is only the client's own start. It prints medians and ratios; `--write` appends
them to benchmarks/RESULTS.md.

Measured so for the namespace move (issue 12), against f48fa16, the last
revision with the `client` / `daemon` import names.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import ms, private_daemon  # noqa: E402
from benchmarks.daemon_loop import Row, report  # noqa: E402

DEFAULT_AGAINST = "f48fa16"
# The namespace move's goal: no worse than the revision before it, beyond the noise.
GOAL = 1.0


def install_revision(rev: str, into: Path) -> Path:
    """REV's `rbd` command, installed from a worktree under into."""
    tree = into / "tree"
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(tree), rev], check=True
    )
    venv = into / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "rbd-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps"]
    strict = ["--config-settings", "editable_mode=strict"]
    subprocess.run([*pip, *strict, "-e", str(tree)], check=True)
    subprocess.run([str(python), "-m", "compileall", "-q", str(tree)], check=True)
    return venv / "bin" / "rbd"


def remove_revision(into: Path) -> None:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(into / "tree")],
        check=False,
    )
    shutil.rmtree(into, ignore_errors=True)


def measure(rev: str, runs: int) -> dict[str, list[float]]:
    into = Path(tempfile.mkdtemp(prefix="rbd-versus-", dir="/tmp"))
    try:
        other = install_revision(rev, into)
        ours = Path(sys.executable).parent / "rbd"
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "rbd status (this checkout)": [str(ours), "status"],
            f"rbd status ({rev})": [str(other), "status"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        with private_daemon("rbd-versus-d-") as (rbd, _):
            # A user's Python caches bytecode; one untimed round writes what is missing.
            rbd.env.pop("PYTHONDONTWRITEBYTECODE", None)
            for rounds, record in ((2, False), (runs, True)):
                for _ in range(rounds):
                    order = list(commands.items())
                    random.shuffle(order)
                    for name, command in order:
                        begin = time.perf_counter()
                        subprocess.run(command, env=rbd.env, stdout=subprocess.DEVNULL, check=True)
                        if record:
                            times[name].append(time.perf_counter() - begin)
        return times
    finally:
        remove_revision(into)


def rows(rev: str, times: dict[str, list[float]]) -> list[Row]:
    medians = {name: statistics.median(values) for name, values in times.items()}
    bare = medians["python -c pass"]
    ours = medians["rbd status (this checkout)"]
    theirs = medians[f"rbd status ({rev})"]
    result: list[Row] = [
        (f"{name} wall, median of {len(times[name])} (interleaved)", ms(m), None, None)
        for name, m in medians.items()
    ]
    for label, value in (("this checkout", ours), (rev, theirs)):
        result.append(
            (f"ratio `rbd status` / `python -c pass`, {label}", f"{value / bare:.2f}", None, None)
        )
    ratio = ours / theirs
    low, high = ratio_interval(times["rbd status (this checkout)"], times[f"rbd status ({rev})"])
    result.append(
        (
            f"ratio this checkout / {rev} (`rbd status`), 95% interval {low:.3f}–{high:.3f}",
            f"{ratio:.3f}",
            f"no worse: interval reaches ≤ {GOAL}",
            low <= GOAL,
        )
    )
    return result


def ratio_interval(
    ours: list[float], theirs: list[float], resamples: int = 2000
) -> tuple[float, float]:
    """A bootstrap 95% interval of median(ours) / median(theirs), resampling whole
    rounds (each round ran both, interleaved), so a difference inside the run-to-run
    noise is not called a regression."""
    rng = random.Random(0)
    rounds = list(zip(ours, theirs, strict=True))
    ratios = sorted(
        statistics.median(a for a, _ in sample) / statistics.median(b for _, b in sample)
        for sample in (rng.choices(rounds, k=len(rounds)) for _ in range(resamples))
    )
    return ratios[int(0.025 * resamples)], ratios[int(0.975 * resamples) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--against", default=DEFAULT_AGAINST, help="git revision to compare")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    report(
        "benchmarks/client_versus.py",
        rows(args.against, measure(args.against, args.runs)),
        args.write,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
