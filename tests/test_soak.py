"""Soak: a thousand consecutive rebuilds of one tiny crate by one daemon, which must
record every one and end with no more memory or file descriptors than it settled at.
Slow (a few minutes): `bash .ci/soak`, never in the default run."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from rbd.contract import protocol
from tests.conftest import WAIT_S, Events, Rbd, make_crate

REBUILDS = 1000
WARM_UP = 20
# Bounds on what the daemon may gain between the warm-up and the last rebuild, 980
# rebuilds apart. fds: a leak of one a build (a pipe to cargo, a store cursor, a
# watch) would add 980; 10 leaves room only for what opens now and then and does
# not grow with builds (a thread's eventfd, the log reopened). RSS: it moves
# without leaking (allocator arenas, Python's free lists, SQLite's page cache of
# up to 2 MB filling as the store grows): measured +1.1 MB on rustc 1.95 / Python
# 3.11, climbing about 100 kB every 100 rebuilds alongside the store. 10 MB, i.e.
# 10 KB a build, leaves that room several times over and still catches keeping
# whole builds (a Build with its cargo output, parsed timings, diagnostics). A
# leak of a few hundred bytes a build stays under it: the samples printed along
# the way show it as a steady climb that does not level off.
MAX_RSS_GROWTH_KB = 10 * 1024
MAX_FD_GROWTH = 10
SAMPLE_EVERY = 100

MANIFEST = (
    '[package]\nname = "soak"\nversion = "0.1.0"\nedition = "2021"\n\n'
    # `check`: no codegen or link, so a rebuild costs about a tenth of a second.
    '[package.metadata.rbd]\ncommand = "check"\nsettle_ms = 5\n'
)
MAIN_RS = ('fn main() {\n    println!("a");\n}\n', 'fn main() {\n    println!("b");\n}\n')


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def store_kb(rbd: Rbd) -> int:
    paths = [rbd.store, rbd.store + "-wal"]
    return sum(os.path.getsize(p) for p in paths if os.path.exists(p)) // 1024


def save(path: Path, text: str) -> None:
    # Renamed over, as editors save: the daemon never sees a half-written file, so
    # every save is exactly one build.
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


def wait_idle(rbd: Rbd, crate: Path) -> None:
    """Until the project is idle again: measurements then see no build's transient
    pipes or processes."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        projects = rbd.request(protocol.STATUS, path=str(crate))["projects"]
        if projects and projects[0]["state"] == "idle":
            return
        time.sleep(0.01)
    raise AssertionError("the project did not go idle")


def sample(rbd: Rbd, crate: Path, pid: int) -> tuple[int, int]:
    wait_idle(rbd, crate)
    return rss_kb(pid), fd_count(pid)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_a_thousand_rebuilds_leak_nothing_and_are_all_recorded(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "soak", "soak", {"Cargo.toml": MANIFEST})
    main = crate / "src" / "main.rs"
    rbd.start_daemon()
    pid = rbd.daemon_pid()
    events: Events = rbd.events()
    rbd.ok("start", cwd=crate)
    builds: list[dict[str, Any]] = [events.finished()]
    began = time.monotonic()
    warm: tuple[int, int] | None = None
    samples: list[tuple[int, int, int]] = []
    for n in range(1, REBUILDS + 1):
        save(main, MAIN_RS[n % 2])
        builds.append(events.finished())
        # The driver's own record of events would grow by the thousand: not the daemon's.
        events.seen.clear()
        if n == WARM_UP:
            warm = sample(rbd, crate, pid)
            samples.append((n, *warm))
        elif n % SAMPLE_EVERY == 0:
            samples.append((n, *sample(rbd, crate, pid)))
    took = time.monotonic() - began
    end = sample(rbd, crate, pid)
    assert warm is not None

    print(
        f"\nsoak: {REBUILDS} rebuilds in {took:.1f} s ({took / REBUILDS * 1000:.0f} ms each); "
        f"daemon RSS {warm[0]} kB after {WARM_UP} -> {end[0]} kB at the end "
        f"({end[0] - warm[0]:+d} kB); fds {warm[1]} -> {end[1]} ({end[1] - warm[1]:+d}); "
        f"store {store_kb(rbd)} kB"
    )
    print("soak samples (rebuild, RSS kB, fds): " + " ".join(f"{s}" for s in samples))

    outcomes = {build["outcome"] for build in builds}
    assert outcomes == {"success"}, outcomes
    ids = [build["id"] for build in builds]
    assert len(set(ids)) == REBUILDS + 1
    history = rbd.request(protocol.HISTORY, path=str(crate), limit=REBUILDS * 10)["builds"]
    assert sorted(build["id"] for build in history) == sorted(ids), "a rebuild went unrecorded"

    assert end[0] - warm[0] < MAX_RSS_GROWTH_KB, f"RSS grew {end[0] - warm[0]} kB"
    assert end[1] - warm[1] <= MAX_FD_GROWTH, f"fds grew {warm[1]} -> {end[1]}"
