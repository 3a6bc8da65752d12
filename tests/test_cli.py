"""The `rbd` client as a user runs it: thin imports, tail output, logs, paths."""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import platformdirs
import pytest

from rbd.contract import paths, protocol
from tests.conftest import WAIT_S, Rbd, make_crate

HEAVY = ("structlog", "anyio", "watchfiles", "rbd.daemon", "sqlite3", "tomlkit")


def imported_modules(rbd: Rbd, *args: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "rbd.client", *args],
        env=rbd.env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    modules = set()
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            modules.add(line.rsplit("|", 1)[1].strip())
    return modules


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)}


def test_status_imports_nothing_heavy(rbd: Rbd, crate: Path) -> None:
    rbd.ok("start", cwd=crate)
    modules = imported_modules(rbd, "status")
    assert "rbd.client.cli" in modules
    assert not heavy(modules), heavy(modules)
    assert not heavy(imported_modules(rbd, "history"))


def test_runtime_dir_matches_platformdirs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert paths.runtime_dir() == platformdirs.user_runtime_dir("rbd")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert paths.log_path() == str(tmp_path / "state" / "rbd" / "rbd.log")


def test_logs_prints_the_log_path(rbd: Rbd) -> None:
    assert rbd.ok("logs").strip() == str(rbd.base / "state" / "rbd" / "rbd.log")


def read_lines(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def next_matching(lines: queue.Queue[str], text: str) -> str:
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"no line with {text!r}; saw {seen}") from None
        seen.append(line)
        if text in line:
            return line


def tail(rbd: Rbd, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rbd.client", "tail", *args],
        env=rbd.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_tail_prints_a_summary_per_build_and_the_first_error(rbd: Rbd, crate: Path) -> None:
    rbd.start_daemon()
    human = tail(rbd)
    as_json = tail(rbd, "--json")
    try:
        human_lines, json_lines = read_lines(human), read_lines(as_json)
        deadline = time.monotonic() + WAIT_S
        while rbd.request(protocol.STATUS)["daemon"]["subscribers"] < 2:
            assert time.monotonic() < deadline, "the tails never subscribed"
            time.sleep(0.02)
        rbd.ok("start", cwd=crate)
        assert "demo" in next_matching(human_lines, "✓")
        (crate / "src" / "main.rs").write_text('fn main() { let x: u32 = "no"; }\n')
        failed = next_matching(human_lines, "✗")
        assert "1 error," in failed and "src/main.rs" in failed
        assert "mismatched types" in next_matching(human_lines, "error[E0308]")

        events: list[dict[str, Any]] = []
        while len([e for e in events if e["event"] == "build_finished"]) < 2:
            events.append(json.loads(json_lines.get(timeout=WAIT_S)))
        events = [e for e in events if e["event"] != protocol.PROJECT_STATE]  # not a build's
        names = [e["event"] for e in events]
        assert names[0] == "build_started" and "unit_finished" in names
        started = [e for e in events if e["event"] == "build_started"]
        assert started[1]["trigger"] == ["src/main.rs"]
        unit = next(e for e in events if e["event"] == "unit_finished")
        assert unit["name"] == "demo" and unit["duration_s"] is not None
        finished = [e for e in events if e["event"] == "build_finished"]
        assert finished[1]["build"]["outcome"] == "failure"
        assert finished[1]["build"]["errors"] == 1
        assert "mismatched types" in finished[1]["first_error"]
        for event in events:
            assert event["project"] == str(crate) and "build_id" in event
    finally:
        human.kill()
        as_json.kill()
        human.wait()
        as_json.wait()


def test_history_of_several_projects_has_a_project_column_and_a_median_each(
    rbd: Rbd, tmp_path: Path
) -> None:
    one = make_crate(tmp_path / "one", "one")
    two = make_crate(tmp_path / "two", "two")
    rbd.start_daemon()
    events = rbd.events()
    for crate in (one, two):
        rbd.ok("start", cwd=crate)
        assert events.finished()["outcome"] == "success"
        for n in range(2):
            (crate / "src" / "main.rs").write_text(f'fn main() {{ println!("{n}"); }}\n')
            build = events.finished()
            assert build["outcome"] == "success" and build["trigger"] == ["src/main.rs"]
    # Outside every project: the builds of both.
    lines = rbd.ok("history", cwd=tmp_path).splitlines()
    medians = [line for line in lines if "edit rebuilds: median" in line]
    assert [line.split(":")[0] for line in medians] == ["two", "one"], lines
    header = next(line for line in lines if line.split()[:2] == ["id", "started"])
    assert header.split()[2] == "project", header
    rows = [line for line in lines if line.split() and line.split()[0].isdigit()]
    assert [row.split()[3] for row in rows] == ["two"] * 3 + ["one"] * 3, lines
    # One project's history stays as it was: no project column, one median.
    own = rbd.ok("history", cwd=one).splitlines()
    assert [line.split(":")[0] for line in own if "edit rebuilds" in line] == ["edit rebuilds"], own
    assert "project" not in next(line for line in own if line.split()[:2] == ["id", "started"])
    # The JSON is the same list of builds as ever.
    builds = json.loads(rbd.ok("history", "--json", cwd=tmp_path))
    assert [b["project"] for b in builds] == [str(two)] * 3 + [str(one)] * 3


# Root without the capabilities that bypass permission bits: a directory of
# mode 0555 is one it cannot write, as for any user.
AS_A_USER = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
COMMANDS = [
    ["start"],
    ["stop"],
    ["shutdown"],
    ["status"],
    ["tail"],
    ["history"],
    ["show", "1"],
    ["suggest"],
    ["tune", "revert"],
    ["logs", "-f"],
    ["daemon"],
    ["bench", "--foreground", "--runs", "1", "--warmup", "0", "--clean"],
]


def broken(path: Path, kind: str) -> Path:
    if kind == "a file":
        path.write_text("not a directory\n")
    elif kind == "a dangling symlink":
        path.symlink_to(path.with_name("missing"))
    else:
        path.mkdir(mode=0o555)
        path.chmod(0o555)
    return path


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run rbd as a user who cannot write 0555 directories",
)
@pytest.mark.parametrize(
    "variable", ["XDG_STATE_HOME", "HOME", "XDG_RUNTIME_DIR", "XDG_CACHE_HOME"]
)
@pytest.mark.parametrize("kind", ["a file", "a dangling symlink", "an unwritable directory"])
def test_no_command_prints_a_traceback_whatever_rbd_s_directories_are(
    rbd: Rbd, crate: Path, variable: str, kind: str
) -> None:
    env = {**rbd.env, variable: str(broken(rbd.base / "broken", kind))}
    if variable == "HOME":
        del env["XDG_STATE_HOME"]  # the state dir is then under HOME
    commands = COMMANDS
    if variable == "XDG_RUNTIME_DIR":
        # A bench in the foreground has no use for the socket: it would just run.
        commands = [c for c in COMMANDS if c[0] != "bench"]
    elif variable == "XDG_CACHE_HOME":
        # Only the daemon and a bench use the cache: they go on without rbd's shim.
        commands = [["start"]]
    for args in commands:
        done = subprocess.run(
            [*AS_A_USER, sys.executable, "-m", "rbd.client", *args],
            cwd=crate,
            env=env,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            check=False,
        )
        said = f"rbd {' '.join(args)} with {variable} {kind}: {done.returncode}\n{done.stderr}"
        assert "Traceback" not in done.stderr, said
        if variable == "XDG_CACHE_HOME":
            assert done.returncode == 0, said
            continue
        assert done.returncode != 0, said
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("rbd"), said
        assert not os.path.exists(rbd.lock), said
    for log in (rbd.base / "state" / "rbd").glob("*.log"):
        assert "Traceback" not in log.read_text(), log
