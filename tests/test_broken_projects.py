"""Broken projects against the real daemon and cargo: a manifest with a TOML syntax error,
a workspace member that does not exist, a build script that hangs. Each must give a clear
error or a recorded build, leave the daemon up and watching, never loop, and recover once
the project is fixed. (Output with invalid UTF-8: test_projects.test_invalid_utf8_output_is_kept.)
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from rbd.contract import protocol
from tests.conftest import (
    WAIT_S,
    Events,
    Rbd,
    make_crate,
    processes,
    processes_in_group,
    wait_gone,
)
from tests.test_projects import main_rs, started

# How long a broken project is watched for builds nobody asked for. A rebuild loop (a
# build's own writes, a replan that reports the vanished member as a change, a project
# task restarting after an internal error) shows within a fraction of this; the sentinel
# edit that follows each window catches anything slower that slipped in.
QUIET_S = 1.0
# The TOML error appended to a manifest: an unclosed table header, on line 5.
BROKEN_TABLE = "[dependencies\n"
HANG_FLAG = "hang.rs"
# Hangs for an hour while hang.rs exists. The flag, not a new build.rs, starts the hang:
# compiling a build script takes seconds on a loaded 2-core machine, and would eat into a
# short timeout; running the compiled one takes milliseconds.
HANGING_BUILD_RS = (
    "fn main() {\n"
    '    println!("cargo:rerun-if-changed=build.rs");\n'
    f'    println!("cargo:rerun-if-changed={HANG_FLAG}");\n'
    f'    if std::path::Path::new("{HANG_FLAG}").exists() {{\n'
    "        std::thread::sleep(std::time::Duration::from_secs(3600));\n"
    "    }\n"
    "}\n"
)
TIMEOUT_S = 3


def finished_event(events: Events) -> dict[str, Any]:
    """The next build_finished event whole (its `first_error` is beside the summary)."""
    return events.wait_for(lambda e: e.get("event") == protocol.BUILD_FINISHED)


def unasked_build(events: Events, window_s: float = QUIET_S) -> dict[str, Any] | None:
    """The first build_started within window_s from now, or None; returns at once on one."""
    deadline = time.monotonic() + window_s
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            event = events.queue.get(timeout=remaining)
        except queue.Empty:
            return None
        events.seen.append(event)
        if event.get("event") in (protocol.BUILD_STARTED, "_closed"):
            return event
    return None


def project_status(rbd: Rbd, root: Path) -> dict[str, Any]:
    """`rbd status --json` of the one project at root (the CLI, as a user would see it)."""
    status = json.loads(rbd.ok("status", "--json", str(root)))
    (project,) = status["projects"]
    assert project["root"] == str(root)
    return project  # type: ignore[no-any-return]


def shown(rbd: Rbd, build_id: int) -> dict[str, Any]:
    return json.loads(rbd.ok("show", str(build_id), "--json"))  # type: ignore[no-any-return]


def cargo_error(rbd: Rbd, root: Path) -> list[str]:
    """What cargo itself says about the project: its error's lines, blank ones dropped."""
    done = subprocess.run(
        ["cargo", "build", "--offline"],
        cwd=root,
        env={**rbd.env, "CARGO_TERM_COLOR": "never"},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode != 0, "cargo builds the project that was meant to be broken"
    lines = [line.rstrip() for line in done.stderr.splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("error"))
    return lines[start:]


def assert_keeps_cargos_error(first_error: str | None, cargo_says: list[str]) -> None:
    # Recorded as cargo said it, not reworded or cut to its first line: the location
    # (` --> Cargo.toml:5:14`) and the `Caused by:` chain are what tell a user what to fix.
    assert first_error is not None
    kept = first_error.splitlines()
    assert len(kept) >= 2, first_error
    assert kept == cargo_says[: len(kept)], (first_error, cargo_says)


def note_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("rbd: note:")]


def assert_problem(problem: str | None, *needles: str) -> None:
    text = problem or ""
    for needle in needles:
        assert needle in text, text


def assert_no_problem(problem: str | None) -> None:
    assert problem is None, problem


def assert_no_internal_error(rbd: Rbd, pid: int) -> None:
    """The daemon that started is the one answering, and nothing in it failed unforeseen."""
    assert rbd.daemon_pid() == pid
    errors = rbd.base / "daemon.err"
    assert not errors.exists() or "Traceback" not in errors.read_text(errors="replace")
    log = rbd.base / "state" / "rbd" / "rbd.log"
    failures = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        # project_failed: Project.run caught an exception and restarts the project, the
        # start of a crash loop; `exception` is any log.exception's traceback.
        if isinstance(record, dict) and (
            record.get("event") == "project_failed" or "exception" in record
        ):
            failures.append(line)
    assert failures == []


def workspace(root: Path, members: list[str], existing: list[str]) -> Path:
    for name in existing:
        make_crate(root / name, name)
    (root / ".gitignore").write_text("/target\n")
    listed = ", ".join(f'"{name}"' for name in members)
    (root / "Cargo.toml").write_text(f'[workspace]\nmembers = [{listed}]\nresolver = "2"\n')
    return root


def test_start_on_a_manifest_with_a_syntax_error(rbd: Rbd, crate: Path) -> None:
    # `rbd start` accepts it (the daemon watches the project and records cargo's error, so
    # that saving the fix rebuilds: see daemon/projects/settings.py) with the error as one
    # note line.
    manifest = crate / "Cargo.toml"
    good = manifest.read_text()
    manifest.write_text(good + BROKEN_TABLE)
    rbd.start_daemon()
    pid = rbd.daemon_pid()
    events = rbd.events()

    done = rbd.run("start", cwd=crate)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    (note,) = note_lines(done.stdout)
    assert re.search(r"Cargo\.toml:5:\d+", note), note
    # One readable line: not the `|` gutter of cargo's source excerpt.
    assert not note.rstrip().endswith("|"), note

    failed = finished_event(events)
    assert failed["build"]["outcome"] == "failure"
    assert failed["build"]["trigger"] == []
    assert_keeps_cargos_error(failed["first_error"], cargo_error(rbd, crate))
    assert shown(rbd, failed["build"]["id"])["first_error"] == failed["first_error"]
    project = project_status(rbd, crate)
    assert project["state"] == "idle" and project["current"] is None
    assert project["last_build"]["id"] == failed["build"]["id"]
    assert_problem(project["problem"], "Cargo.toml:5:")

    assert unasked_build(events) is None
    (crate / "src" / "main.rs").write_text(main_rs("still watched"))
    sentinel = finished_event(events)["build"]
    assert sentinel["id"] == failed["build"]["id"] + 1
    assert sentinel["trigger"] == ["src/main.rs"] and sentinel["outcome"] == "failure"

    manifest.write_text(good)
    fixed = events.finished()
    assert fixed["outcome"] == "success" and fixed["trigger"] == ["Cargo.toml"]
    assert project_status(rbd, crate)["last_build"]["outcome"] == "success"
    assert_no_internal_error(rbd, pid)


def test_fixing_the_manifest_clears_the_problem_in_status(rbd: Rbd, crate: Path) -> None:
    manifest = crate / "Cargo.toml"
    good = manifest.read_text()
    manifest.write_text(good + BROKEN_TABLE)
    events = started(rbd, crate)
    assert events.finished()["outcome"] == "failure"
    manifest.write_text(good)
    assert events.finished()["outcome"] == "success"
    assert project_status(rbd, crate)["problem"] is None


def test_manifest_broken_while_watched_is_a_failed_build_until_fixed(rbd: Rbd, crate: Path) -> None:
    events = started(rbd, crate)
    pid = rbd.daemon_pid()
    first = events.finished()
    assert first["outcome"] == "success"

    manifest = crate / "Cargo.toml"
    good = manifest.read_text()
    manifest.write_text(good + BROKEN_TABLE)
    failed = finished_event(events)
    build = failed["build"]
    assert build["outcome"] == "failure"
    assert build["trigger"] == ["Cargo.toml"]
    assert build["id"] == first["id"] + 1
    assert re.search(r"Cargo\.toml:5:\d+", failed["first_error"] or ""), failed["first_error"]
    assert_keeps_cargos_error(failed["first_error"], cargo_error(rbd, crate))
    record = shown(rbd, build["id"])
    assert record["outcome"] == "failure"
    assert record["first_error"] == failed["first_error"]
    project = project_status(rbd, crate)
    assert project["state"] == "idle" and project["current"] is None
    assert project["last_build"]["id"] == build["id"]
    assert project["last_build"]["outcome"] == "failure"

    assert unasked_build(events) is None
    # Still watching: a source edit with the manifest still broken builds (and fails) too.
    (crate / "src" / "main.rs").write_text(main_rs("edited while broken"))
    sentinel = finished_event(events)
    assert sentinel["build"]["id"] == build["id"] + 1
    assert sentinel["build"]["trigger"] == ["src/main.rs"]
    assert sentinel["build"]["outcome"] == "failure"
    assert sentinel["first_error"] == failed["first_error"]

    manifest.write_text(good)
    fixed = events.finished()
    assert fixed["outcome"] == "success" and fixed["trigger"] == ["Cargo.toml"]
    project = project_status(rbd, crate)
    assert project["state"] == "idle"
    assert project["last_build"]["id"] == fixed["id"]
    assert_no_problem(project["problem"])
    history = json.loads(rbd.ok("history", "--json", cwd=crate))
    assert [b["outcome"] for b in history] == ["success", "failure", "failure", "success"]
    assert_no_internal_error(rbd, pid)


def test_start_on_a_workspace_with_a_missing_member(rbd: Rbd, tmp_path: Path) -> None:
    root = workspace(tmp_path / "ws", ["a", "b"], existing=["a"])
    rbd.start_daemon()
    pid = rbd.daemon_pid()
    events = rbd.events()

    done = rbd.run("start", cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    (note,) = note_lines(done.stdout)
    # The last `Caused by:` is the reason to act on; a note ending at "Caused by:" hides it.
    assert_problem(
        note, "workspace member", str(root / "b"), f"failed to read `{root / 'b' / 'Cargo.toml'}`"
    )
    assert not note.rstrip().endswith("Caused by:"), note

    failed = finished_event(events)
    assert failed["build"]["outcome"] == "failure"
    assert_keeps_cargos_error(failed["first_error"], cargo_error(rbd, root))
    assert "workspace member" in (failed["first_error"] or "")
    project = project_status(rbd, root)
    assert project["state"] == "idle"
    assert project["last_build"]["outcome"] == "failure"
    assert_problem(project["problem"], "workspace member")

    assert unasked_build(events) is None
    (root / "a" / "src" / "main.rs").write_text(main_rs("still watched"))
    sentinel = events.finished()
    assert sentinel["id"] == failed["build"]["id"] + 1
    assert sentinel["trigger"] == ["a/src/main.rs"] and sentinel["outcome"] == "failure"

    make_crate(root / "b", "b")
    fixed = events.finished()
    assert fixed["outcome"] == "success"
    assert "b/Cargo.toml" in fixed["trigger"]
    project = project_status(rbd, root)
    assert_no_problem(project["problem"])
    assert project["last_build"]["id"] == fixed["id"]
    assert_no_internal_error(rbd, pid)


def test_member_deleted_while_watched_fails_once_and_recovers(rbd: Rbd, tmp_path: Path) -> None:
    root = workspace(tmp_path / "ws", ["a", "b"], existing=["a", "b"])
    events = started(rbd, root)
    pid = rbd.daemon_pid()
    first = events.finished()
    assert first["outcome"] == "success"

    shutil.rmtree(root / "b")
    failed = finished_event(events)
    build = failed["build"]
    assert build["outcome"] == "failure"
    assert build["id"] == first["id"] + 1
    assert "b/Cargo.toml" in build["trigger"]
    assert_keeps_cargos_error(failed["first_error"], cargo_error(rbd, root))
    assert str(root / "b") in (failed["first_error"] or "")
    project = project_status(rbd, root)
    # The workspace is there, one member is not: not `gone`, and not stuck building.
    assert project["state"] == "idle" and project["current"] is None
    assert project["last_build"]["id"] == build["id"]
    assert_problem(project["problem"], "workspace member")

    assert unasked_build(events) is None
    (root / "a" / "src" / "main.rs").write_text(main_rs("still watched"))
    sentinel = events.finished()
    assert sentinel["id"] == build["id"] + 1
    assert sentinel["trigger"] == ["a/src/main.rs"] and sentinel["outcome"] == "failure"

    make_crate(root / "b", "b")
    fixed = events.finished()
    assert fixed["outcome"] == "success"
    assert "b/Cargo.toml" in fixed["trigger"]
    assert_no_problem(project_status(rbd, root)["problem"])
    # The restored member is watched again.
    (root / "b" / "src" / "main.rs").write_text(main_rs("b again"))
    again = events.finished()
    assert again["trigger"] == ["b/src/main.rs"] and again["outcome"] == "success"
    assert_no_internal_error(rbd, pid)


def build_script_pids(crate: Path) -> list[int]:
    """Live build-script-build processes of crate's target dir."""
    build_dir = str(crate / "target" / "debug" / "build").encode()
    return [
        p.pid
        for p in processes()
        if not p.zombie and p.argv[0].startswith(build_dir) and b"build-script-build" in p.argv[0]
    ]


def wait_for_build_script(crate: Path) -> int:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        found = build_script_pids(crate)
        if found:
            return found[0]
        time.sleep(0.02)
    raise AssertionError("the build script never ran")


def test_hanging_build_script_is_killed_at_the_timeout(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "hang", "hang", {"build.rs": HANGING_BUILD_RS})
    try:
        check_hanging_build_script(rbd, crate)
    finally:
        # A daemon that failed to kill the build would leave a script sleeping for an hour.
        for pid in build_script_pids(crate):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def check_hanging_build_script(rbd: Rbd, crate: Path) -> None:
    events = started(rbd, crate)
    pid = rbd.daemon_pid()
    first = events.finished()
    assert first["outcome"] == "success"
    # Set after the first build, which compiles the build script under the default timeout.
    done = rbd.run("start", cwd=crate, env={**rbd.env, "RBD_TIMEOUT_S": str(TIMEOUT_S)})
    assert done.returncode == 0, done.stderr
    assert "already watching" in done.stdout
    assert project_status(rbd, crate)["config"]["timeout_s"] == TIMEOUT_S

    (crate / HANG_FLAG).write_text("// build.rs sleeps for an hour while this file exists\n")
    began = events.started()
    script = wait_for_build_script(crate)
    group = os.getpgid(script)
    # cargo leads the build's process group; the build script is in it.
    assert group in processes_in_group(group) and script in processes_in_group(group)
    building = project_status(rbd, crate)
    assert building["state"] == "building"
    assert building["current"]["build_id"] == began["build_id"]

    ended = finished_event(events)
    build = ended["build"]
    assert build["id"] == began["build_id"]
    assert build["outcome"] == "timeout"
    assert build["trigger"] == [HANG_FLAG]
    assert TIMEOUT_S <= build["wall_s"] < TIMEOUT_S + 10
    assert f"killed after the {TIMEOUT_S} s timeout" in (ended["first_error"] or "")
    # Gone when the build is reported, not merely some time later.
    assert processes_in_group(group) == []
    assert wait_gone(script, 5) and wait_gone(group, 5)

    record = shown(rbd, build["id"])
    assert record["outcome"] == "timeout"
    assert record["first_error"] == ended["first_error"]
    project = project_status(rbd, crate)
    assert project["state"] == "idle" and project["current"] is None
    assert project["last_build"]["id"] == build["id"]
    assert project["last_build"]["outcome"] == "timeout"

    (crate / HANG_FLAG).unlink()
    again = events.finished()
    assert again["id"] == build["id"] + 1
    assert again["trigger"] == [HANG_FLAG]
    assert again["outcome"] == "success"
    assert build_script_pids(crate) == []
    history = json.loads(rbd.ok("history", "--json", cwd=crate))
    assert [b["outcome"] for b in history] == ["success", "timeout", "success"]
    assert_no_internal_error(rbd, pid)
