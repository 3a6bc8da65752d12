"""sccache's server outlives the builds that use it (rbd.daemon.build.sccache), though
every build's leftover processes are swept (rbd.daemon.build.procs)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rbd.daemon.build import procs
from tests.conftest import WAIT_S, Rbd, make_crate
from tests.test_projects import edit, main_rs

pytestmark = pytest.mark.skipif(
    shutil.which("sccache") is None, reason="sccache is not installed (.ci/setup installs it)"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def servers(port: int) -> dict[int, bytes]:
    """Live sccache processes started for this test's port, with their environments."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        alive = stat.rsplit(b")", 1)[1].split()[0] != b"Z"
        if b"(sccache)" in stat and alive and f"SCCACHE_SERVER_PORT={port}".encode() in environ:
            found[int(entry)] = environ
    return found


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_one_server_serves_every_build_and_ends_with_the_daemon(rbd: Rbd, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **rbd.env,
        "RUSTC_WRAPPER": "sccache",
        "SCCACHE_DIR": str(tmp_path / "cache"),
        "SCCACHE_SERVER_PORT": str(port),
        "SCCACHE_IDLE_TIMEOUT": "0",
    }
    crate = make_crate(tmp_path / "cached")
    rbd.start_daemon()
    events = rbd.events()
    assert rbd.run("start", cwd=crate, env=env).returncode == 0
    assert events.finished()["outcome"] == "success"
    first = servers(port)
    assert len(first) == 1, "no sccache server outlived the first build"
    [(pid, environ)] = first.items()
    assert procs.MARKER.encode() not in environ, "the server carries a build's marker"

    edit(crate / "src" / "main.rs", main_rs("again"))
    assert events.finished()["outcome"] == "success"
    assert set(servers(port)) == {pid}, "the second build did not use the same server"

    rbd.ok("shutdown")
    wait_for(lambda: not servers(port), "the server outlived the daemon that started it")
