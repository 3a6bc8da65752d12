"""What rbd keeps is the user's alone: the state dir 0700 and everything in it 0600
(the store holds every `rbd start`'s environment), the cache dir 0700, older
stores and logs tightened on start, a state dir of another uid refused, and no
environment value in the log."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from rbd.contract import protocol
from tests.conftest import WAIT_S, Rbd

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: only root can give a directory to another uid"
)

SECRET = "rbd-test-secret-4f1c9e"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def builds(rbd: Rbd) -> int:
    return len(rbd.request(protocol.HISTORY, all=True, limit=1000)["builds"])


def wait_for_builds(rbd: Rbd, count: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while builds(rbd) < count:
        assert time.monotonic() < deadline, f"fewer than {count} builds recorded"
        time.sleep(0.05)


def assert_private(state: Path, cache: Path) -> None:
    assert mode(state) == 0o700
    names = sorted(entry.name for entry in state.iterdir())
    assert {"rbd.sqlite3", "rbd.sqlite3-wal", "rbd.sqlite3-shm", "rbd.log"} <= set(names), names
    too_open = {entry.name: oct(mode(entry)) for entry in state.iterdir() if mode(entry) != 0o600}
    assert too_open == {}, too_open
    assert mode(cache) == 0o700


def test_the_state_dir_and_cache_dir_are_private_and_the_log_holds_no_environment(
    rbd: Rbd, crate: Path
) -> None:
    # Through the client's spawn: it creates the state dir and daemon-start.log.
    rbd.env["MY_API_TOKEN"] = SECRET
    rbd.env["XDG_CACHE_HOME"] = str(rbd.base / "cache")
    rbd.ok("start", cwd=crate)
    wait_for_builds(rbd, 1)
    state = rbd.base / "state" / "rbd"
    (crate / "src" / "main.rs").write_text('fn main() { println!("saved"); }\n')
    wait_for_builds(rbd, 2)
    assert (state / "daemon-start.log").exists()
    assert_private(state, rbd.base / "cache" / "rbd")
    # The store must keep the environment (a resumed project builds with it),
    # so it is private; the log must not have it at all. A restart resumes the
    # project with that environment: its log lines too.
    rbd.ok("shutdown")
    rbd.start_daemon()
    wait_for_builds(rbd, 3)
    rbd.ok("stop", cwd=crate)
    for log in state.glob("*.log"):
        assert SECRET not in log.read_text(errors="replace"), log


def test_an_older_state_dir_open_to_others_is_tightened_on_start(rbd: Rbd, crate: Path) -> None:
    rbd.env["XDG_CACHE_HOME"] = str(rbd.base / "cache")
    rbd.ok("start", cwd=crate)
    wait_for_builds(rbd, 1)
    rbd.ok("shutdown")
    state = rbd.base / "state" / "rbd"
    # What rbd left before this guarantee: the default umask's modes.
    (state / "rbd.log.1").write_text("{}\n")
    for path in [state, rbd.base / "cache" / "rbd", *state.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    rbd.start_daemon()
    wait_for_builds(rbd, 2)
    assert_private(state, rbd.base / "cache" / "rbd")


@needs_root
def test_a_state_dir_of_another_uid_is_refused_in_one_line(rbd: Rbd, crate: Path) -> None:
    state = rbd.base / "state" / "rbd"
    state.mkdir(parents=True)
    os.chown(state, 65534, 65534)
    for args in (["start"], ["daemon"]):
        done = rbd.run(*args, cwd=crate)
        assert done.returncode == 1, done
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "belongs to uid 65534" in lines[0], done.stderr
    assert not os.path.exists(rbd.socket) and not os.path.exists(rbd.lock)
    assert os.listdir(state) == []
