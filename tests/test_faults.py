"""Faults a laptop inflicts on a daemon that runs for weeks: a full disk under the
store, an exhausted inotify limit, SIGTERM mid-build, a client of another version,
a config write cut short. (kill -9 mid-build, racing starts and a vanished project
are in test_app.py and test_projects.py.)"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rbd.contract import protocol
from rbd.daemon.advice import tune
from tests.conftest import SLOW_MAIN, WAIT_S, Rbd, make_crate, rustc_processes_under, wait_gone
from tests.test_projects import edit, main_rs, started, wait_for_rustc

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@contextlib.contextmanager
def tiny_filesystem(where: Path, size: str = "8m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at where: a disk that can really fill up."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no byte left; returns it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (1 << 16, 1 << 10, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    return filler


def status(rbd: Rbd) -> dict[str, Any]:
    return json.loads(rbd.ok("status", "--json"))  # type: ignore[no-any-return]


def wait_until(check: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


@needs_root
def test_a_full_disk_under_the_store_stops_no_build_and_loses_nothing(
    rbd: Rbd, crate: Path
) -> None:
    # The store and the daemon's log share the state dir, as they do for users.
    with tiny_filesystem(Path(rbd.store).parent) as state:
        try:
            events = started(rbd, crate)
            first = events.finished()
            assert first["outcome"] == "success" and first["id"] is not None
            filler = fill(state)

            outage = []
            for n in range(2):
                edit(crate / "src" / "main.rs", main_rs(f"full {n}"))
                build = events.finished()
                assert build["outcome"] == "success"
                assert build["id"] is None  # nowhere to record it yet
                outage.append(build)
            daemon = status(rbd)["daemon"]
            assert "full" in daemon["store_error"], daemon
            assert daemon["unsaved_builds"] == 2 and daemon["lost_builds"] == 0
            shown = rbd.ok("status")
            assert "store error" in shown and "2 builds wait in memory" in shown
            # What the store had stays readable while it cannot take more.
            history = json.loads(rbd.ok("history", "--json", cwd=crate))
            assert [b["id"] for b in history] == [first["id"]]

            filler.unlink()
            # No save needed: the daemon offers the waiting builds again by itself.
            wait_until(lambda: status(rbd)["daemon"]["unsaved_builds"] == 0, "builds saved")
            assert status(rbd)["daemon"]["store_error"] is None
            history = json.loads(rbd.ok("history", "--json", cwd=crate))
            assert [b["started_at"] for b in reversed(history)] == [
                b["started_at"] for b in [first, *outage]
            ]
            assert [b["outcome"] for b in history] == ["success"] * 3
            edit(crate / "src" / "main.rs", main_rs("after"))
            assert events.finished()["id"] is not None
            rbd.ok("shutdown")
            with sqlite3.connect(rbd.store) as db:
                assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
                assert db.execute("SELECT count(*) FROM builds").fetchone()[0] == 4
        finally:
            rbd.close()


@pytest.fixture
def inotify_limit() -> Iterator[Path]:
    knob = Path("/proc/sys/fs/inotify/max_user_watches")
    if not os.access(knob, os.W_OK):
        pytest.skip(f"{knob} is not writable here")
    # A value this low is one an interrupted run of this test left behind.
    before = max(int(knob.read_text()), 65536)
    try:
        yield knob
    finally:
        knob.write_text(f"{before}\n")


def test_an_exhausted_inotify_limit_is_named_and_polling_takes_over(
    rbd: Rbd, crate: Path, inotify_limit: Path
) -> None:
    events = started(rbd, crate)
    events.finished()
    rbd.ok("stop", cwd=crate)
    inotify_limit.write_text("1\n")
    rbd.ok("start", cwd=crate)
    wait_until(lambda: status(rbd)["projects"][0]["polling"], "polling")
    assert "fs.inotify.max_user_watches" in status(rbd)["projects"][0]["problem"]
    # Two saves: the second comes after a whole build, when only the poller
    # (no look for missed changes around a new plan) can notice it.
    for n in range(2):
        edit(crate / "src" / "main.rs", main_rs(f"polled {n}"))
        build = events.wait_for(
            lambda e: (
                e.get("event") == protocol.BUILD_FINISHED and "src/main.rs" in e["build"]["trigger"]
            )
        )
        assert build["build"]["outcome"] == "success"
    assert "fs.inotify.max_user_watches" in rbd.ok("status")


@pytest.mark.parametrize("how", ["SIGTERM", "rbd shutdown"])
def test_stopping_the_daemon_mid_build_cancels_records_and_exits_within_5_s(
    rbd: Rbd, tmp_path: Path, how: str
) -> None:
    crate = make_crate(tmp_path / "slow", "slow", {"src/main.rs": SLOW_MAIN})
    events = started(rbd, crate)
    build_id = events.started()["build_id"]
    rustc = wait_for_rustc(crate)
    pid = rbd.daemon_pid()
    asked = time.monotonic()
    if how == "SIGTERM":
        os.kill(pid, signal.SIGTERM)
    else:
        rbd.ok("shutdown")
    assert wait_gone(pid, 5.0), f"daemon still running {time.monotonic() - asked:.1f} s after {how}"
    assert all(wait_gone(p, 1.0) for p in rustc) and rustc_processes_under(crate) == []
    assert not os.path.exists(rbd.socket) and not os.path.exists(rbd.lock)
    with sqlite3.connect(rbd.store) as db:
        row = db.execute("SELECT outcome, wall_s FROM builds WHERE id = ?", (build_id,)).fetchone()
    assert row[0] == "cancelled" and row[1] > 0


OTHER_VERSION_CLIENT = textwrap.dedent(
    """\
    import sys
    from rbd.contract import protocol
    protocol.PROTOCOL_VERSION += 1
    from rbd.client.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_a_client_of_another_protocol_version_is_told_to_restart_the_daemon(
    rbd: Rbd, crate: Path
) -> None:
    rbd.ok("start", cwd=crate)
    pid = rbd.daemon_pid()

    def newer(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", OTHER_VERSION_CLIENT, *args],
            cwd=crate,
            env=rbd.env,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )

    for command in (["status"], ["history"], ["start"]):
        done = newer(*command)
        assert done.returncode == 3, done
        assert "Traceback" not in done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "rbd shutdown && rbd start" in lines[0], lines
        assert f"speaks protocol {protocol.PROTOCOL_VERSION} " in lines[0]
    # The advice works: the newer client can stop the older daemon.
    done = newer("shutdown")
    assert done.returncode == 0, done.stderr
    assert wait_gone(pid, 5.0)
    rbd.ok("start", cwd=crate)
    assert rbd.daemon_pid() != pid


WRITER = textwrap.dedent(
    """\
    import sys
    from pathlib import Path
    from rbd.daemon.advice import tune
    path, old, new = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    old, new = old.read_bytes(), new.read_bytes()
    print("ready", flush=True)
    while True:
        tune.write_atomic(path, new)
        tune.write_atomic(path, old)
    """
)


def test_a_config_write_killed_midway_leaves_the_old_or_the_new_content(tmp_path: Path) -> None:
    # Large contents make each write take long enough for kills to land inside it.
    old = ("# the user's own comment\n" + "jobs = 2\n" * 200_000).encode()
    new = ("# the user's own comment\n" + '[build]\nrustflags = ["-C", "x"]\n' * 100_000).encode()
    config = tmp_path / ".cargo" / "config.toml"
    config.parent.mkdir()
    config.write_bytes(old)
    (tmp_path / "old").write_bytes(old)
    (tmp_path / "new").write_bytes(new)
    seen = set()
    for n in range(20):
        sources = [str(tmp_path / "old"), str(tmp_path / "new")]
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(config), *sources], stdout=subprocess.PIPE
        )
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        # Spread over a few writes' time, so the kill lands in every stage of one.
        time.sleep(0.002 * n)
        writer.kill()
        writer.wait()
        content = config.read_bytes()
        assert content in (old, new), f"kill {n} left {len(content)} bytes of neither"
        seen.add(content)
    # A kill mid-write leaves at worst a stray temporary file, never the config half-done.
    assert {p.name for p in config.parent.iterdir()} - {"config.toml"} <= {
        p.name for p in config.parent.glob(".config.toml.*.rbd-tmp")
    }


@needs_root
def test_a_config_write_on_a_full_disk_keeps_the_old_content(tmp_path: Path) -> None:
    with tiny_filesystem(tmp_path / ".cargo", "1m") as cargo_dir:
        config = cargo_dir / "config.toml"
        config.write_text("# keep me\n[build]\njobs = 2\n")
        fill(cargo_dir)
        with pytest.raises(OSError) as failed:
            tune.write_atomic(config, b"# keep me\n[build]\njobs = 2\n" + b"# more\n" * 10_000)
        assert failed.value.errno == errno.ENOSPC
        assert config.read_text() == "# keep me\n[build]\njobs = 2\n"
        assert sorted(p.name for p in cargo_dir.iterdir()) == ["config.toml", "filler"]


# Root without the capabilities that bypass permission bits: as a user's own
# daemon, it cannot write a file of its own that is mode 0444.
AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def run_as_a_user(
    rbd: Rbd, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AS_A_USER, sys.executable, "-m", "rbd.client", *args],
        cwd=cwd,
        env=rbd.env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )


def recorded(rbd: Rbd) -> int:
    with sqlite3.connect(rbd.store) as db:
        count: int = db.execute("SELECT count(*) FROM builds").fetchone()[0]
        return count


def start_and_build(rbd: Rbd, crate: Path) -> dict[str, Any]:
    """`rbd start` as a user; the daemon's status once the project has built."""
    since = datetime.now(UTC).isoformat()
    started = run_as_a_user(rbd, "start", cwd=crate)
    assert started.returncode == 0, started.stderr

    def status() -> dict[str, Any]:
        reply: dict[str, Any] = json.loads(run_as_a_user(rbd, "status", "--json").stdout)
        return reply

    def built() -> bool:
        build = status()["projects"][0]["last_build"]
        return build is not None and build["started_at"] >= since

    wait_until(built, "a build")
    return status()


@needs_root
def test_a_store_once_read_only_is_writable_again_on_the_next_start(rbd: Rbd, crate: Path) -> None:
    start_and_build(rbd, crate)
    assert run_as_a_user(rbd, "shutdown").returncode == 0
    before = recorded(rbd)
    assert before >= 1
    # The user makes the store read-only for a while: a daemon started then
    # leaves a -shm that SQLite created with the store's mode, 0444.
    Path(rbd.store).chmod(0o444)
    run_as_a_user(rbd, "start", cwd=crate)
    run_as_a_user(rbd, "shutdown")
    Path(rbd.store).chmod(0o644)
    # Every later daemon must record its builds again.
    status = start_and_build(rbd, crate)
    assert status["daemon"]["store_error"] is None, status["daemon"]
    assert run_as_a_user(rbd, "shutdown").returncode == 0
    assert recorded(rbd) > before
    assert {stat.S_IMODE(p.stat().st_mode) for p in Path(rbd.store).parent.iterdir()} == {0o600}
