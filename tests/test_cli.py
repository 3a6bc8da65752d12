"""The `rbd` client as a user runs it: thin imports, tail output, logs, paths."""

from __future__ import annotations

import json
import os
import queue
import re
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


# --- the parser: one subcommand's, as main() builds it -------------------------------

ARGVS = [
    ["status"],
    ["status", "--json", "some/dir"],
    ["status", "a", "b"],
    ["status", "--bogus"],
    ["start", "--run-bin", "web", "--listen", "127.0.0.1:3000", "--settle-ms", "5"],
    ["start", "--settle-ms", "x"],
    ["tune", "apply", "s1", "s2", "--dry-run"],
    ["tune"],
    ["tune", "undo"],
    ["history", "--limit", "3", "--changes"],
    ["show", "x"],
    ["bench", "--configs", "default,mold", "--runs", "2"],
    ["logs", "-f", "--app", "d"],
]


def outcome(argv: list[str], command: str | None) -> dict[str, Any] | str:
    from rbd.client import cli
    from rbd.client.errors import UsageError

    try:
        return vars(cli._parser(command).parse_args(argv))
    except UsageError as exc:
        return f"usage error: {exc}"


@pytest.mark.parametrize("argv", ARGVS, ids=" ".join)
def test_one_subcommands_parser_parses_as_the_whole_one(argv: list[str]) -> None:
    """main() builds only the parser of the command argv starts with (4 ms less of
    every start): what it parses to, and the errors, are those of the whole parser."""
    assert outcome(argv, argv[0]) == outcome(argv, None)


def test_every_subcommand_is_listed_and_its_help_is_the_same_alone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rbd.client import cli

    whole = cli._parser()
    assert whole._subparsers is not None
    choices = whole._subparsers._group_actions[0].choices
    assert choices is not None and tuple(choices) == cli.COMMANDS
    for command in cli.COMMANDS:
        helps = []
        for parser in (whole, cli._parser(command)):
            with pytest.raises(SystemExit):
                parser.parse_args([command, "--help"])
            helps.append(capsys.readouterr().out)
        assert helps[0] == helps[1] and f"usage: rbd {command}" in helps[0]


STATUS_ARGVS = [
    ["status"],
    ["status", "--json"],
    ["status", "d"],
    ["status", "--json", "d"],
    ["status", "d", "--json"],
    ["status", ""],
    ["status", "a b", "--json"],
    ["status", "--json", "--json"],
    ["status", "a", "b"],
    ["status", "-1"],
    ["status", "-"],
    ["status", "--js"],
    ["status", "--json=1"],
    ["status", "-h"],
    ["status", "--bogus", "d"],
    ["status", "d", "--json", "e"],
    ["statu"],
    ["history"],
    [],
]


@pytest.mark.parametrize("argv", STATUS_ARGVS, ids=lambda argv: " ".join(argv) or "nothing")
def test_status_parsed_without_argparse_is_what_argparse_parses(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """main() parses `rbd status`'s plain forms itself (argparse is 2 ms of its start):
    each such parse equals argparse's, and every other form is left to argparse."""
    from rbd.client import cli

    fast = cli._status_args(argv)
    if fast is not None:
        assert vars(fast) == outcome(argv, argv[0])
    plain = len(argv) <= 3 and argv[:1] == ["status"] and argv.count("--json") <= 1
    plain = plain and len([w for w in argv[1:] if w != "--json"]) <= 1
    plain = plain and not any(w.startswith("-") and w != "--json" for w in argv[1:])
    assert (fast is not None) == plain, argv


# --- `rbd status` ends without the interpreter's finalization ----------------------

# main() as a call from Python runs it: returned, then the interpreter's orderly exit.
ORDERLY = "import sys; from rbd.client.cli import main; sys.exit(main(sys.argv[1:]))"


def ends(argv: list[str], env: dict[str, str], cwd: Path) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of argv run normally, with stdout closed, and into a
    pipe whose reader has gone."""
    normal = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=False)
    closed = subprocess.run(
        ["sh", "-c", 'exec "$@" >&-', "sh", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    reader, writer = os.pipe()
    os.close(reader)
    try:
        broken = subprocess.run(
            argv, env=env, cwd=cwd, stdout=writer, stderr=subprocess.PIPE, text=True, check=False
        )
    finally:
        os.close(writer)
    # Numbers vary from run to run (the daemon's uptime): the text around them may not.
    return [
        (normal.returncode, re.sub(r"[0-9.]+", "N", normal.stdout), normal.stderr),
        (closed.returncode, closed.stdout, closed.stderr),
        (broken.returncode, "", broken.stderr),
    ]


def test_status_ends_as_an_orderly_exit_would(rbd: Rbd, crate: Path) -> None:
    """The console script's `rbd status` skips the interpreter's finalization (os._exit
    once its output is flushed): the same output and exit code as the orderly exit,
    with stdout closed too, and the same report when the output cannot be written."""
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    events.finished()
    # Buffered output, as a user's: unbuffered, a closed pipe fails the print itself.
    env = {k: v for k, v in rbd.env.items() if k != "PYTHONUNBUFFERED"}
    script = str(Path(sys.executable).parent / "rbd")
    gone = {**env, "XDG_RUNTIME_DIR": str(rbd.base / "nowhere")}
    found = []
    for args, with_env in ((["status"], env), (["status", "--json"], env), (["status"], gone)):
        fast = ends([script, *args], with_env, crate)
        assert fast == ends([sys.executable, "-c", ORDERLY, *args], with_env, crate), args
        found.append(fast)
    # What each case was: printed; the interpreter's report of the lost output; no daemon.
    assert found[0][0][0] == 0 and "[idle]" in found[0][0][1]
    assert found[0][2][0] == 120 and "BrokenPipeError" in found[0][2][2]
    assert found[2][0][0] == 3 and "no rbd daemon answers" in found[2][0][2]
