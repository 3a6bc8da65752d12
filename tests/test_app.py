"""The daemon's life: autospawn, status, stop, shutdown, crash recovery, restarts."""

from __future__ import annotations

import json
import os
import plistlib
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import (
    SLOW_MAIN,
    WAIT_S,
    Rbd,
    make_crate,
    processes_in_group,
    rustc_processes_under,
    wait_gone,
)
from tests.test_projects import main_rs, started, wait_for_rustc


def test_start_spawns_one_daemon_that_watches_several_projects(rbd: Rbd, tmp_path: Path) -> None:
    one = make_crate(tmp_path / "one", "one")
    two = make_crate(tmp_path / "two", "two")
    assert "watching" in rbd.ok("start", cwd=one)
    pid = rbd.daemon_pid()
    assert "watching" in rbd.ok("start", str(two))
    assert rbd.daemon_pid() == pid
    assert "already watching" in rbd.ok("start", cwd=one / "src")

    status = json.loads(rbd.ok("status", "--json"))
    daemon = status["daemon"]
    assert daemon["pid"] == pid
    assert daemon["protocol"] == 1
    assert daemon["version"]
    assert daemon["uptime_s"] >= 0
    assert daemon["socket"] == rbd.socket
    assert daemon["store"] == rbd.store
    assert daemon["log"].startswith(str(rbd.base / "state"))
    roots = sorted(p["root"] for p in status["projects"])
    assert roots == [str(one), str(two)]
    for project in status["projects"]:
        assert project["state"] in ("idle", "settling", "waiting", "building")
        assert project["config"]["command"] == "build"
        assert "last_build" in project
    only = json.loads(rbd.ok("status", "--json", str(two)))
    assert [p["root"] for p in only["projects"]] == [str(two)]
    assert str(one) in rbd.ok("status")


def test_stop_forgets_the_project_and_shutdown_leaves_nothing(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "slow", "slow", {"src/main.rs": SLOW_MAIN})
    other = make_crate(tmp_path / "other", "other")
    rbd.ok("start", cwd=other)
    rbd.ok("start", cwd=crate)
    rustc = wait_for_rustc(crate)
    assert "stopped watching" in rbd.ok("stop", cwd=crate)
    assert all(wait_gone(pid, 10) for pid in rustc), "stop left the build running"
    status = json.loads(rbd.ok("status", "--json"))
    assert [p["root"] for p in status["projects"]] == [str(other)]
    assert rbd.run("stop", cwd=crate).returncode == 1

    pid = rbd.daemon_pid()
    rbd.ok("start", cwd=crate)
    wait_for_rustc(crate)
    assert "stopped" in rbd.ok("shutdown")
    assert wait_gone(pid, 10)
    assert not os.path.exists(rbd.socket)
    assert not os.path.exists(rbd.lock)
    assert rustc_processes_under(crate) == []
    with sqlite3.connect(rbd.store) as db:
        outcomes = [
            row[0]
            for row in db.execute("SELECT outcome FROM builds WHERE project = ?", (str(crate),))
        ]
    assert outcomes == ["cancelled", "cancelled"]


def test_kill_9_during_a_build_is_cleaned_up_by_the_next_start(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "slow", "slow", {"src/main.rs": SLOW_MAIN})
    events = started(rbd, crate)
    interrupted_id = events.started()["build_id"]
    rustc = wait_for_rustc(crate)
    pgid = os.getpgid(rustc[0])
    os.kill(rbd.daemon_pid(), signal.SIGKILL)
    events.close()
    leftovers = processes_in_group(pgid)
    assert leftovers, "cargo should outlive a daemon killed with SIGKILL"
    assert os.path.exists(rbd.socket)
    assert rbd.run("status").returncode == 3

    (crate / "src" / "main.rs").write_text(main_rs("fast"))
    assert rbd.run("start", cwd=crate).returncode == 0
    assert all(wait_gone(pid, 5) for pid in leftovers + rustc)
    # The restarted daemon resumed the project, and its first build may be over
    # before anyone could subscribe: wait on the record instead.
    history = wait_for_history(rbd, crate, lambda builds: builds[0]["outcome"] == "success")
    assert [b["outcome"] for b in history][-1] == "interrupted"
    assert history[-1]["id"] == interrupted_id
    with sqlite3.connect(rbd.store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_history_survives_a_restart(rbd: Rbd, crate: Path) -> None:
    events = started(rbd, crate)
    events.finished()
    (crate / "src" / "main.rs").write_text(main_rs("second"))
    events.finished()
    before = json.loads(rbd.ok("history", "--json", cwd=crate))
    rbd.ok("shutdown")
    rbd.start_daemon()
    # The restarted daemon watches the same project again, with a first build.
    after = wait_for_history(rbd, crate, lambda builds: len(builds) == len(before) + 1)
    assert after[1:] == before
    assert len(json.loads(rbd.ok("history", "--json", "--limit", "1", cwd=crate))) == 1
    assert json.loads(rbd.ok("history", "--json", "--all")) == after


def test_unreachable_daemon_exits_3_with_advice(rbd: Rbd) -> None:
    for command in (["status"], ["history"], ["tail"], ["stop"], ["shutdown"], ["show", "1"]):
        done = rbd.run(*command)
        assert done.returncode == 3, command
        assert "rbd start" in done.stderr
        assert "Traceback" not in done.stderr


def test_bad_projects_get_a_clear_error(rbd: Rbd, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = rbd.run("start", cwd=empty)
    assert done.returncode == 1
    assert f"no Cargo.toml in {empty}" in done.stderr

    crate = make_crate(tmp_path / "demo")
    no_cargo = {**rbd.env, "PATH": "/usr/bin:/bin"}
    done = rbd.run("start", cwd=crate, env=no_cargo)
    assert done.returncode == 1
    assert "cargo is not on the PATH" in done.stderr
    assert json.loads(rbd.ok("status", "--json"))["projects"] == []

    done = rbd.run("show", "999")
    assert done.returncode == 1 and "no finished build with id 999" in done.stderr
    done = rbd.run("history", "--limit", "0")
    assert done.returncode == 2
    done = rbd.run("frobnicate")
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_stale_socket_of_a_killed_idle_daemon_is_replaced(rbd: Rbd, crate: Path) -> None:
    rbd.ok("start", cwd=crate)
    old = rbd.daemon_pid()
    os.kill(old, signal.SIGKILL)
    assert wait_gone(old, 5)
    assert os.path.exists(rbd.socket) and os.path.exists(rbd.lock)
    rbd.ok("start", cwd=crate)
    assert rbd.daemon_pid() != old


def wait_for_history(
    rbd: Rbd, crate: Path, condition: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        builds = json.loads(rbd.ok("history", "--json", cwd=crate))
        if builds and condition(builds):
            return builds  # type: ignore[no-any-return]
        time.sleep(0.05)
    raise AssertionError("history never reached the expected state")


def test_foreground_daemon_for_service_managers_stops_on_sigterm(rbd: Rbd, crate: Path) -> None:
    daemon = subprocess.Popen(
        [sys.executable, "-m", "rbd.client", "daemon", "--foreground"],
        env=rbd.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        events = None
        deadline = time.monotonic() + WAIT_S
        while events is None and time.monotonic() < deadline:
            try:
                events = rbd.events()
            except Exception:
                assert daemon.poll() is None, daemon.communicate()
                time.sleep(0.02)
        assert events is not None
        rbd.ok("start", cwd=crate)
        events.finished()
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=10) == 0
        assert not os.path.exists(rbd.socket)
        # A second foreground daemon while one runs exits at once, successfully
        # (systemd's Restart=on-failure then leaves it be).
        first = rbd.start_daemon()
        second = subprocess.run(
            [sys.executable, "-m", "rbd.daemon", "--foreground"],
            env=rbd.env,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )
        assert second.returncode == 0 and "already running" in second.stderr
        assert first.poll() is None
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()


def test_service_files_run_the_foreground_daemon() -> None:
    root = Path(__file__).resolve().parent.parent
    unit = (root / "systemd" / "rbd.service").read_text()
    assert "ExecStart=@RBD@ daemon --foreground" in unit
    assert "Restart=on-failure" in unit
    with (root / "launchd" / "dev.rbd.daemon.plist").open("rb") as f:
        plist = plistlib.load(f)
    assert plist["ProgramArguments"] == ["@RBD@", "daemon", "--foreground"]
    assert plist["KeepAlive"] == {"SuccessfulExit": False}


def test_a_socket_directory_others_can_enter_is_refused(rbd: Rbd, crate: Path) -> None:
    runtime = Path(rbd.socket).parent
    runtime.mkdir(parents=True)
    runtime.chmod(0o755)
    done = rbd.run("start", cwd=crate)
    assert done.returncode == 3
    assert "accessible to other users" in done.stderr and "chmod 700" in done.stderr
    assert not os.path.exists(rbd.socket)
    runtime.chmod(0o700)
    rbd.ok("start", cwd=crate)


def test_a_directory_at_the_socket_path_is_refused_in_one_line_and_no_lock_is_left(
    rbd: Rbd, crate: Path
) -> None:
    socket = Path(rbd.socket)
    socket.mkdir(parents=True)
    socket.parent.chmod(0o700)
    for args, code in ((["start"], 3), (["daemon"], 1)):
        done = rbd.run(*args, cwd=crate)
        assert done.returncode == code, done
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{socket} is a directory" in lines[0], done.stderr
        assert not os.path.exists(rbd.lock)
    spawned = (rbd.base / "state" / "rbd" / "daemon-start.log").read_text()
    assert "Traceback" not in spawned and "is a directory" in spawned
    # Not rbd's to remove: it could hold anything.
    assert socket.is_dir()
    socket.rmdir()
    rbd.ok("start", cwd=crate)


def test_racing_starts_from_two_shells_make_one_daemon(rbd: Rbd, tmp_path: Path) -> None:
    one = make_crate(tmp_path / "one", "one")
    two = make_crate(tmp_path / "two", "two")
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "rbd.client", "start", str(crate)],
            env=rbd.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for crate in (one, two, one)
    ]
    for racer in racers:
        _, stderr = racer.communicate(timeout=WAIT_S)
        assert racer.returncode == 0, stderr
    status = json.loads(rbd.ok("status", "--json"))
    assert sorted(p["root"] for p in status["projects"]) == [str(one), str(two)]
    daemons = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit()
        and _cmdline(int(pid)).endswith(b"-m\0rbd.daemon\0")
        and _environ_has(int(pid), rbd.env["XDG_RUNTIME_DIR"])
    ]
    assert daemons == [str(status["daemon"]["pid"])]


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _environ_has(pid: int, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False
