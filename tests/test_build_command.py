"""`rbd build`: a build asked for, as a save would start it, and waited for.

The scheduler's rule first (with the stand-in builder of test_scheduler), then the
command against the real daemon and cargo: the issue's missing linker installed after
the failure, a project not watched, a build running when it is asked, Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from rbd.contract import protocol
from rbd.contract.schema import BuildSummary
from rbd.daemon.build.builder import Build
from tests.conftest import SLOW_MAIN, WAIT_S, Rbd, make_crate, rustc_processes_under
from tests.test_broken_projects import build_script_pids, wait_for_build_script
from tests.test_scheduler import TIMEOUT, FakeBuild, Harness

# Longer than TIMEOUT: a build that waited for it to settle would fail the test.
NEVER_SETTLES_S = 60.0
# Not a file that triggers a build: creating or removing it starts none.
HANG_FLAG = "hang.flag"
HANGING_BUILD_RS = (
    "fn main() {\n"
    '    println!("cargo:rerun-if-changed=build.rs");\n'
    f'    if std::path::Path::new("{HANG_FLAG}").exists() {{\n'
    "        std::thread::sleep(std::time::Duration::from_secs(3600));\n"
    "    }\n"
    "}\n"
)


# --- the scheduler --------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_request_builds_at_once_and_covers_pending_saves(tmp_path: Path) -> None:
    h = Harness(tmp_path, settle_s=NEVER_SETTLES_S)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        number = h.scheduler.request()
        assert await h.next_launch() == []
        assert h.scheduler.covered >= number
        # A save still settling is built by the request's build, not after it.
        h.scheduler.notify(["src/a.rs"])
        number = h.scheduler.request()
        assert await h.next_launch() == ["src/a.rs"]
        assert h.scheduler.covered >= number
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_request_cancels_the_running_build_without_settling(tmp_path: Path) -> None:
    h = Harness(tmp_path, settle_s=NEVER_SETTLES_S)
    h.hold = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run)
        assert await h.next_launch() == []
        first = h.build
        assert first is not None
        number = h.scheduler.request()
        assert h.scheduler.covered < number, "a build launched before the request covers it"
        with anyio.fail_after(TIMEOUT):
            await first.cancelled.wait()
        h.hold = False
        assert await h.next_launch() == []
        assert h.scheduler.covered >= number
        tg.cancel_scope.cancel()


class SlowToMake(Harness):
    """A launch that makes its build only when told (rbd's: reloads, shim, store row)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, settle_s=NEVER_SETTLES_S)
        self.make = anyio.Event()

    async def launch(self, trigger: list[str], settle_s: float | None) -> None:
        self.triggers.append(trigger)
        self.launched.set()
        await self.make.wait()
        self.make = anyio.Event()
        self.build = FakeBuild(self.own)
        self.scheduler.current = self.build
        if self.hold:
            await self.build.cancelled.wait()


@pytest.mark.anyio
async def test_a_request_before_the_build_is_made_cancels_it_once_made(tmp_path: Path) -> None:
    h = SlowToMake(tmp_path)
    h.hold = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run)
        await h.next_launch()
        number = h.scheduler.request()
        h.make.set()
        with anyio.fail_after(TIMEOUT):
            while h.build is None:
                await anyio.sleep(0.005)
            await h.build.cancelled.wait()
        h.hold = False
        h.make.set()
        assert await h.next_launch() == []
        assert h.scheduler.covered >= number
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_request_waits_out_a_pause(tmp_path: Path) -> None:
    h = Harness(tmp_path, settle_s=NEVER_SETTLES_S)
    async with anyio.create_task_group() as tg:
        tg.start_soon(h.scheduler.run, False)
        h.scheduler.pause()
        h.scheduler.request()
        with anyio.fail_after(TIMEOUT):
            while h.scheduler.state != "paused":
                await anyio.sleep(0.005)
        assert h.triggers == []
        h.scheduler.resume()
        assert await h.next_launch() == []
        tg.cancel_scope.cancel()


@pytest.mark.anyio
async def test_a_build_cancelled_before_cargo_runs_ends_at_once(tmp_path: Path) -> None:
    # What a request cancels may not have spawned cargo yet (`rbd build` right after
    # `rbd start`): it must not run to its end, minutes here, before the asked-for build.
    crate = make_crate(tmp_path / "slow", "slow", {"src/main.rs": SLOW_MAIN})
    build = Build(["cargo", "build"], crate, dict(os.environ), 3600, lambda event: None)
    build.cancel()
    try:
        with anyio.fail_after(WAIT_S):
            result = await build.run()
        assert result.outcome == "cancelled"
        assert rustc_processes_under(crate) == []
    finally:
        await build.stop()


# --- the command, against the daemon -----------------------------------------------------


def host_triple() -> str:
    done = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True)
    return next(
        line.split(":", 1)[1].strip()
        for line in done.stdout.splitlines()
        if line.startswith("host:")
    )


def as_summary(stdout: str) -> BuildSummary:
    build: BuildSummary = json.loads(stdout)
    assert set(build) == set(BuildSummary.__annotations__)
    return build


def test_a_linker_installed_after_a_failure_is_used_by_rbd_build(rbd: Rbd, tmp_path: Path) -> None:
    config = f'[target.{host_triple()}]\nlinker = "rbd-test-linker"\n'
    crate = make_crate(tmp_path / "linked", "linked", {".cargo/config.toml": config})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    env = {**rbd.env, "PATH": f"{bin_dir}{os.pathsep}{rbd.env['PATH']}"}
    rbd.start_daemon()
    events = rbd.events()
    started = rbd.run("start", cwd=crate, env=env)
    assert started.returncode == 0, started.stderr
    first = events.finished()
    assert first["outcome"] == "failure"

    # Nothing changed: asked again, it fails again, and says so with its exit code.
    failed = rbd.run("build", "--json", "--dir", str(crate))
    assert failed.returncode == 1, failed.stderr
    again = as_summary(failed.stdout)
    assert again["outcome"] == "failure" and again["trigger"] == []
    assert first["id"] is not None and again["id"] is not None and again["id"] > first["id"]

    linker = bin_dir / "rbd-test-linker"
    linker.write_text('#!/bin/sh\nexec cc "$@"\n')
    linker.chmod(0o755)
    # `rbd start` again (from the same shell) only says it watches already.
    restarted = rbd.run("start", cwd=crate, env=env)
    assert restarted.returncode == 0 and "already watching" in restarted.stdout
    built = rbd.run("build", cwd=crate)
    assert built.returncode == 0, built.stdout + built.stderr
    (line,) = built.stdout.splitlines()
    assert line.startswith("✓") and "linked" in line and line.endswith("← rbd build")
    assert built.stderr == ""
    history = json.loads(rbd.ok("history", "--json", cwd=crate))
    assert [b["outcome"] for b in history] == ["success", "failure", "failure"]
    assert history[0]["id"] > again["id"]
    # A build no change triggered is labelled for what it may have been.
    assert "(start/build)" in rbd.ok("history", cwd=crate)


def test_a_project_not_watched_is_one_line(rbd: Rbd, tmp_path: Path) -> None:
    rbd.start_daemon()
    crate = make_crate(tmp_path / "unwatched")
    done = rbd.run("build", cwd=crate)
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("rbd: ") and "not inside a project rbd watches" in line


def kill_build_scripts(crate: Path) -> None:
    # A daemon that failed to kill the build would leave a script sleeping for an hour.
    for pid in build_script_pids(crate):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def hanging_crate(rbd: Rbd, tmp_path: Path) -> tuple[Path, Any]:
    """A watched crate whose first build hangs in its build script; its events."""
    crate = make_crate(tmp_path / "hang", "hang", {"build.rs": HANGING_BUILD_RS})
    (crate / HANG_FLAG).write_text("build.rs sleeps for an hour while this file exists\n")
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    return crate, events


def test_a_running_build_is_cancelled_and_the_new_one_waited_for(rbd: Rbd, tmp_path: Path) -> None:
    crate, events = hanging_crate(rbd, tmp_path)
    try:
        running = events.started()
        wait_for_build_script(crate)
        (crate / HANG_FLAG).unlink()
        done = rbd.run("build", "--json", "--dir", str(crate))
        assert done.returncode == 0, done.stderr
        build = as_summary(done.stdout)
        cancelled = events.wait_for(lambda e: e.get("event") == protocol.BUILD_FINISHED)
        assert cancelled["build_id"] == running["build_id"]
        assert cancelled["build"]["outcome"] == "cancelled"
        # Started after the one it cancelled had finished, and reported when done.
        assert events.started()["build_id"] == build["id"]
        assert events.finished() == build
        assert build["outcome"] == "success" and build["trigger"] == []
        assert build_script_pids(crate) == []
    finally:
        kill_build_scripts(crate)


def test_ctrl_c_stops_waiting_and_the_build_goes_on(rbd: Rbd, tmp_path: Path) -> None:
    crate, events = hanging_crate(rbd, tmp_path)
    try:
        first = events.started()
        waiting = subprocess.Popen(
            [sys.executable, "-m", "rbd.client", "build", "--dir", str(crate)],
            env=rbd.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The request reached the daemon: the build it asked for runs (and hangs too).
        asked = events.started()
        assert asked["build_id"] != first["build_id"]
        waiting.send_signal(signal.SIGINT)
        out, err = waiting.communicate(timeout=WAIT_S)
        assert waiting.returncode == 130
        assert out == "" and "Traceback" not in err
        (line,) = err.splitlines()
        assert "the build goes on" in line
        status = rbd.request(protocol.STATUS, path=str(crate))
        (project,) = status["projects"]
        assert project["state"] == "building"
        assert project["current"]["build_id"] == asked["build_id"]
    finally:
        rbd.run("stop", str(crate))
        kill_build_scripts(crate)
