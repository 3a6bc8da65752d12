"""A build's processes that left its process group or session: none outlives a cancel,
`rbd stop`, `rbd shutdown` or a crashed daemon's restart, and none is left a zombie."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WAIT_S, Rbd, make_crate, processes, wait_gone

SH = shutil.which("sh") or "/bin/sh"
SETSID = shutil.which("setsid") or "/usr/bin/setsid"
SLEEP = shutil.which("sleep") or "/bin/sleep"

# How each escape is made, by the name of the file its pid is written to. These
# carry the build's marker in their environment:
MARKED = ("group", "session", "daemon")
# Cleared its environment: found as a descendant of the build while its parent lives
# (a cancel or stop kills the tree at once), by the daemon's subreaper once orphaned
# (killed at shutdown).
CLEARED = ("cleared",)
ORPHANED_CLEARED = ("cleared_daemon",)
FOUND_AT_ONCE = MARKED + CLEARED


def escaping_build_rs(pids: Path, release: Path) -> str:
    """A build script that starts one long sleeper per way out of the build's group, each
    writing its pid to `pids/<script pid>/<way>`, then runs until release exists."""

    def shell(name: str) -> str:
        # Written then renamed: the test never reads a half-written pid. The sleeper
        # closes the output cargo reads from the script, as a daemon would: cargo
        # waits for every writer to close it.
        return json.dumps(
            f"echo $$ > {name}.tmp && mv {name}.tmp {name} && exec {SLEEP} 600 <&- >&- 2>&-"
        )

    def orphaned(name: str) -> str:
        inner = f"echo $$ > {name}.tmp && mv {name}.tmp {name} && exec {SLEEP} 600 <&- >&- 2>&-"
        return json.dumps(f"{SETSID} {SH} -c '{inner}' &")

    return f"""\
use std::os::unix::process::CommandExt;
use std::process::Command;

fn main() {{
    println!("cargo:rerun-if-changed=build.rs");
    let dir = format!("{{}}/{{}}", {json.dumps(str(pids))}, std::process::id());
    std::fs::create_dir_all(&dir).unwrap();
    // A child in a process group of its own.
    Command::new("{SH}").arg("-c").arg({shell("group")}).current_dir(&dir)
        .process_group(0).spawn().unwrap();
    // A child in a session of its own.
    Command::new("{SETSID}").arg("{SH}").arg("-c").arg({shell("session")}).current_dir(&dir)
        .spawn().unwrap();
    // A daemon: a grandchild in a session of its own whose parent exited.
    Command::new("{SH}").arg("-c").arg({orphaned("daemon")}).current_dir(&dir)
        .status().unwrap();
    // A child that cleared its environment and left the group.
    Command::new("{SH}").arg("-c").arg({shell("cleared")}).current_dir(&dir)
        .env_clear().process_group(0).spawn().unwrap();
    // A daemon that cleared its environment.
    Command::new("{SH}").arg("-c").arg({orphaned("cleared_daemon")}).current_dir(&dir)
        .env_clear().status().unwrap();
    while !std::path::Path::new({json.dumps(str(release))}).exists() {{
        std::thread::sleep(std::time::Duration::from_millis(10));
    }}
}}
"""


def _is_sleeper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:2] == [SLEEP.encode(), b"600"]
    except OSError:
        return False


def escaped(
    pids: Path, names: tuple[str, ...] = FOUND_AT_ONCE + ORPHANED_CLEARED
) -> dict[str, int]:
    """The sleepers of the first build script run to have started all of them, by way out."""
    deadline = time.monotonic() + WAIT_S
    while True:
        for run in sorted(pids.iterdir()) if pids.exists() else []:
            found = {n: int((run / n).read_text()) for n in names if (run / n).exists()}
            # Running sleep already: the one to kill, not the shell before its exec.
            if len(found) == len(names) and all(_is_sleeper(p) for p in found.values()):
                return found
        assert time.monotonic() < deadline, "the build script's children never all ran"
        time.sleep(0.02)


def zombies_of(parent: int) -> list[int]:
    return [p.pid for p in processes() if p.zombie and p.ppid == parent]


def no_zombie_under(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while zombies_of(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def still_running(pids: dict[str, int]) -> dict[str, int]:
    """Those not gone within 10 s."""
    return {name: pid for name, pid in pids.items() if not wait_gone(pid, 10)}


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Path]:
    """Where the sleepers write their pids (outside the project); kills any left."""
    where = tmp_path / "pids"
    yield where
    for pidfile in where.glob("*/*"):
        try:
            pid = int(pidfile.read_text())
        except ValueError:
            continue
        if _is_sleeper(pid):
            os.kill(pid, signal.SIGKILL)


def escaping_crate(tmp_path: Path, pids: Path) -> tuple[Path, Path]:
    release = tmp_path / "release"
    crate = make_crate(tmp_path / "esc", "esc", {"build.rs": escaping_build_rs(pids, release)})
    return crate, release


def test_a_cancelled_build_leaves_no_escaped_process(rbd: Rbd, tmp_path: Path, pids: Path) -> None:
    crate, release = escaping_crate(tmp_path, pids)
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    daemon = rbd.daemon_pid()
    first = escaped(pids)
    (crate / "src" / "main.rs").write_text('fn main() { println!("edited"); }\n')
    cancelled = events.finished()
    assert cancelled["outcome"] == "cancelled"
    assert still_running({name: first[name] for name in FOUND_AT_ONCE}) == {}
    # The rebuild's script escapes again; it ends, and what it left marked is killed
    # with the build (its cleared child is an orphan by then: the subreaper's).
    second = escaped(pids)
    assert set(second.values()).isdisjoint(first.values())
    release.touch()
    assert events.finished()["outcome"] == "success"
    assert still_running({name: second[name] for name in MARKED}) == {}
    assert no_zombie_under(daemon)
    # Orphans with a cleared environment are the subreaper's: killed at shutdown.
    rbd.ok("shutdown")
    assert still_running(first | second) == {}


def test_stop_leaves_no_escaped_process(rbd: Rbd, tmp_path: Path, pids: Path) -> None:
    crate, _ = escaping_crate(tmp_path, pids)
    rbd.ok("start", cwd=crate)
    daemon = rbd.daemon_pid()
    sleepers = escaped(pids)
    rbd.ok("stop", cwd=crate)
    assert still_running({name: sleepers[name] for name in FOUND_AT_ONCE}) == {}
    assert no_zombie_under(daemon)
    rbd.ok("shutdown")
    assert still_running(sleepers) == {}


def test_shutdown_leaves_no_escaped_process(rbd: Rbd, tmp_path: Path, pids: Path) -> None:
    crate, _ = escaping_crate(tmp_path, pids)
    rbd.ok("start", cwd=crate)
    daemon = rbd.daemon_pid()
    sleepers = escaped(pids)
    assert "stopped" in rbd.ok("shutdown")
    assert still_running(sleepers) == {}
    assert wait_gone(daemon, 10)


def test_a_crashed_daemons_escaped_processes_are_killed_by_the_next(
    rbd: Rbd, tmp_path: Path, pids: Path
) -> None:
    crate, _ = escaping_crate(tmp_path, pids)
    rbd.ok("start", cwd=crate)
    sleepers = escaped(pids, FOUND_AT_ONCE)
    # Not the store's: another daemon's marker, and none.
    strangers = [
        subprocess.Popen([SLEEP, "600"], env={**os.environ, "RBD_BUILD": "0123456789abcdef.00"}),
        subprocess.Popen([SLEEP, "600"]),
    ]
    try:
        os.kill(rbd.daemon_pid(), signal.SIGKILL)
        rbd.ok("start", cwd=crate)
        assert still_running(sleepers) == {}
        assert all(s.poll() is None for s in strangers)
    finally:
        for stranger in strangers:
            stranger.kill()
            stranger.wait()
