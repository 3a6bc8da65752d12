"""Run mode's bad input and process hygiene, against the real daemon and cargo: every
mistake is one line of error and the daemon lives on; an app that crashes, never gets
ready or cannot be executed is recorded, not restarted in a loop; and no process an app
started, however it hid, outlives its instance, `rbd stop` or `rbd shutdown`."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from rbd.contract import protocol
from rbd.daemon.build.procs import scope_of
from tests.conftest import Events, Rbd, make_crate, processes, wait_gone
from tests.test_serve import (
    APP_EXITED,
    APP_FAILED,
    APP_READY,
    APP_STARTED,
    expect,
    finished,
    free_port,
    get,
    is_app,
    no_zombie_under,
    seen,
    server_crate,
    server_rs,
    status_app,
    stop,
    wait_until,
)

# A bin that says who it is and then waits to be stopped (ready by ready_pattern).
NAMED_RS = (
    'fn main() {{\n    println!("I am {name}");\n'
    "    loop {{ std::thread::sleep(std::time::Duration::from_secs(60)); }}\n}}\n"
)


def named(name: str) -> str:
    return NAMED_RS.format(name=name)


def one_line_error(done: Any) -> str:
    """The stderr of a refused command: exit 1, one line, no traceback."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    text: str = lines[0]
    return text


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def daemon_alive(rbd: Rbd) -> list[dict[str, Any]]:
    """The daemon still answers; returns its projects."""
    status = json.loads(rbd.ok("status", "--json"))
    projects: list[dict[str, Any]] = status["projects"]
    return projects


def test_which_bin_runs(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path / "multi",
        "multi",
        {
            "src/bin/alpha.rs": named("alpha"),
            "src/bin/beta.rs": named("beta"),
            "rbd.toml": 'ready_pattern = "^I am "\n',
        },
    )
    (crate / "src" / "main.rs").unlink()
    rbd.start_daemon()
    events = rbd.events()

    # Two bins and no default-run: which one is not guessed.
    error = one_line_error(rbd.run("start", "--run", cwd=crate))
    assert "alpha" in error and "beta" in error and "default-run" in error
    error = one_line_error(rbd.run("start", "--run-bin", "gamma", cwd=crate))
    assert "gamma" in error and "alpha" in error and "beta" in error
    assert daemon_alive(rbd) == []

    # The bin named in the environment (RBD_RUN) runs.
    done = rbd.run("start", cwd=crate, env={**rbd.env, "RBD_RUN": "beta"})
    assert done.returncode == 0, done.stderr
    build = finished(events, project=str(crate))
    assert build["outcome"] == "success"
    beta = expect(events, is_app(APP_STARTED, build_id=build["id"]))
    assert beta["bin"] == "beta" and beta["argv"][0].endswith("/beta")
    ready = expect(events, is_app(APP_READY, pid=beta["pid"]))
    assert ready["app"]["ready_by"] == "pattern"
    stop(rbd, events, crate, beta["pid"])

    # default-run decides when nothing else does; --run-bin beats it.
    manifest = crate / "Cargo.toml"
    manifest.write_text(
        manifest.read_text().replace("[package]\n", '[package]\ndefault-run = "alpha"\n')
    )
    rbd.ok("start", "--run", cwd=crate)
    build = finished(events, project=str(crate))
    alpha = expect(events, is_app(APP_STARTED, build_id=build["id"]))
    assert alpha["bin"] == "alpha"
    expect(events, is_app(APP_READY, pid=alpha["pid"]))
    assert "I am alpha" in rbd.ok("logs", "--app", str(crate))
    stop(rbd, events, crate, alpha["pid"])
    rbd.ok("start", "--run-bin", "beta", cwd=crate)
    build = finished(events, project=str(crate))
    assert expect(events, is_app(APP_STARTED, build_id=build["id"]))["bin"] == "beta"


def test_an_app_that_exits_at_once_is_recorded_not_restarted(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path / "quitter",
        "quitter",
        {
            # Its child inherits the output pipe and outlives it: the crash must still be
            # seen when the app exits (not when the pipe closes), and the child killed.
            "src/main.rs": "fn main() {\n"
            '    let child = std::process::Command::new("sleep").arg("300").spawn().unwrap();\n'
            '    println!("starting child={}", child.id());\n'
            '    eprintln!("fatal: boom");\n    std::process::exit(3);\n}\n'
        },
    )
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", "--run", cwd=crate)
    first = finished(events)
    assert first["outcome"] == "success"
    one = expect(events, is_app(APP_STARTED, build_id=first["id"]))
    exited = expect(events, is_app(APP_EXITED, pid=one["pid"]))
    assert exited["exit_code"] == 3 and exited["signal"] is None
    assert exited["expected"] is False
    assert "fatal: boom" in exited["last_lines"]
    (line,) = [text for text in exited["last_lines"] if text.startswith("starting child=")]
    child = int(line.removeprefix("starting child="))
    wait_until(lambda: not alive(child), "the crashed app's child killed")
    failed = expect(events, is_app(APP_FAILED, build_id=first["id"]))
    assert failed["pid"] == one["pid"] and "3" in failed["app"]["error"]
    assert "fatal: boom" in failed["last_lines"]

    state = status_app(rbd, crate)
    assert state is not None
    assert state["state"] == "exited" and state["exit_code"] == 3 and state["pid"] == one["pid"]
    assert "fatal: boom" in state["last_lines"]
    text = rbd.ok("status", cwd=crate)
    assert "fatal: boom" in text and "3" in text
    assert daemon_alive(rbd)[0]["state"] == "idle"

    # The next build starts it again (the sentinel); until then nothing restarted it.
    rbd.run("build", cwd=crate)
    second = finished(events, trigger=[])
    two = expect(events, is_app(APP_STARTED, build_id=second["id"]))
    expect(events, is_app(APP_EXITED, pid=two["pid"]))
    assert [e["pid"] for e in seen(events, APP_STARTED)] == [one["pid"], two["pid"]]
    assert not seen(events, APP_READY)
    history = json.loads(rbd.ok("history", "--json", cwd=crate))
    app = history[1]["app"]
    assert app["pid"] == one["pid"] and app["ready_s"] is None and app["error"]
    # The replaced instance had already exited: nothing was stopped.
    assert history[0]["app"]["replaced_exit"] in (None, 3)


def test_an_app_that_never_gets_ready_is_recorded(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path / "sleepy",
        "sleepy",
        {"src/main.rs": named("sleepy"), "rbd.toml": "ready_timeout_s = 0.5\n"},
    )
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", "--run", cwd=crate)
    first = finished(events)
    one = expect(events, is_app(APP_STARTED, build_id=first["id"]))
    # No listen, no pattern: ready means a listening socket, which it never has.
    state = wait_until(
        lambda: (app := status_app(rbd, crate)) is not None and app["error"] and app,
        "the app's readiness timeout recorded",
    )
    assert "ready" in state["error"] and state["pid"] == one["pid"]
    failed = expect(events, is_app(APP_FAILED, pid=one["pid"]))
    assert failed["app"]["error"] == state["error"]
    # It is left running: slow is not dead.
    assert state["state"] == "running" and alive(one["pid"])
    assert not seen(events, APP_READY)
    (build,) = json.loads(rbd.ok("history", "--json", cwd=crate))
    assert build["app"]["error"] == state["error"] and build["app"]["ready_s"] is None
    assert "Traceback" not in rbd.ok("status", cwd=crate)
    stop(rbd, events, crate, one["pid"])


def test_a_binary_that_cannot_be_executed_is_an_error_until_it_can(
    rbd: Rbd, tmp_path: Path
) -> None:
    crate = make_crate(
        tmp_path / "noexec",
        "noexec",
        {"src/main.rs": named("noexec"), "rbd.toml": 'ready_pattern = "^I am "\n'},
    )
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", "--run", cwd=crate)
    first = finished(events)
    one = expect(events, is_app(APP_READY, build_id=first["id"]))
    binary = crate / "target" / "debug" / "noexec"
    binary.chmod(0o644)
    # Nothing changed for cargo (a fresh build), but the binary did: a restart is tried.
    assert rbd.run("build", cwd=crate).returncode == 0
    second = finished(events, trigger=[])
    failed = expect(events, is_app(APP_FAILED, build_id=second["id"]))
    assert "not executable" in failed["app"]["error"] and failed["pid"] is None
    # The instance that runs is left serving, as after a failed build.
    assert alive(one["pid"]) and not seen(events, APP_EXITED)
    state = status_app(rbd, crate)
    assert state is not None and state["pid"] == one["pid"] and state["state"] == "ready"
    history = json.loads(rbd.ok("history", "--json", cwd=crate))
    assert history[0]["id"] == second["id"] and history[0]["app"] == failed["app"]
    assert daemon_alive(rbd)[0]["state"] == "idle"
    assert "Traceback" not in rbd.ok("status", cwd=crate)

    binary.chmod(0o755)
    assert rbd.run("build", cwd=crate).returncode == 0
    third = finished(events, trigger=[])
    ready = expect(events, is_app(APP_READY, build_id=third["id"]))
    assert ready["app"]["error"] is None and ready["pid"] != one["pid"]
    assert expect(events, is_app(APP_EXITED, pid=one["pid"]))["expected"] is True


def test_bad_run_settings_are_one_line_errors(rbd: Rbd, tmp_path: Path) -> None:
    crate = server_crate(tmp_path / "srv")
    port = free_port()
    rbd.start_daemon()
    for address, words in [
        ("nonsense", ["nonsense", "HOST:PORT"]),
        ("127.0.0.1", ["HOST:PORT"]),
        ("127.0.0.1:99999", ["port"]),
        ("localhost:http", ["port"]),
        ("example.com:80", ["example.com"]),
        (f"0.0.0.0:{port}", ["0.0.0.0", "not local"]),
        (f"192.0.2.1:{port}", ["not local"]),
    ]:
        error = one_line_error(rbd.run("start", "--run", "--listen", address, cwd=crate))
        assert all(word in error for word in words), (address, error)
    error = one_line_error(
        rbd.run("start", "--run", cwd=crate, env={**rbd.env, "RBD_LISTEN": "127.0.0.1:"})
    )
    assert "RBD_" in error and "127.0.0.1:" in error

    # A port another process listens on is refused at `rbd start`, not at the first restart.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        error = one_line_error(
            rbd.run("start", "--run", "--listen", f"127.0.0.1:{busy}", cwd=crate)
        )
        assert f"127.0.0.1:{busy}" in error and "in use" in error

    (crate / "rbd.toml").write_text('command = "check"\n')
    error = one_line_error(rbd.run("start", "--run", cwd=crate))
    assert "run mode" in error and "check" in error
    (crate / "rbd.toml").write_text('ready_pattern = "(unclosed"\n')
    error = one_line_error(rbd.run("start", "--run", cwd=crate))
    assert "ready_pattern" in error

    # None of it was watched, none of it hurt the daemon, and the port is free.
    assert daemon_alive(rbd) == []
    (crate / "rbd.toml").unlink()
    events = rbd.events()
    rbd.ok("start", "--run", "--listen", f"127.0.0.1:{port}", cwd=crate)
    build = finished(events)
    expect(events, is_app(APP_READY, build_id=build["id"]))
    assert get(port) == "v1"


# The sleepers the apps start, by how each escapes the app's process group.
WAYS = ("same", "group", "session", "daemon")


def sleeper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[:2] == [b"sleep", b"613"]
    except OSError:
        return False


def children_of(where: Path, app_pid: int) -> dict[str, int]:
    """The sleepers instance app_pid started, once all of them run."""

    def found() -> dict[str, int] | None:
        pids = {w: where / f"{app_pid}.{w}" for w in WAYS}
        if not all(path.exists() for path in pids.values()):
            return None
        children = {w: int(path.read_text()) for w, path in pids.items()}
        return children if all(sleeper(pid) for pid in children.values()) else None

    children: dict[str, int] = wait_until(found, f"the children of {app_pid}")
    return children


def marked(scope: str) -> set[int]:
    """Live processes carrying a marker of this store's daemon (builds and apps)."""
    prefix = f"RBD_BUILD={scope}.".encode()
    found = set()
    for process in processes():
        if process.zombie:
            continue
        try:
            with open(f"/proc/{process.pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:
            continue
        if any(entry.startswith(prefix) for entry in environ):
            found.add(process.pid)
    return found


def left_behind(pids: dict[str, int]) -> dict[str, int]:
    """Those not gone within 10 s."""
    return {name: pid for name, pid in pids.items() if not wait_gone(pid, 10)}


@pytest.fixture
def pids(tmp_path: Path) -> Any:
    """Where the apps write their children's pids (outside the projects); kills any left."""
    where = tmp_path / "pids"
    where.mkdir()
    yield where
    for path in where.glob("*.*"):
        try:
            pid = int(path.read_text())
        except ValueError:
            continue
        if sleeper(pid):
            os.kill(pid, signal.SIGKILL)


def first_build(events: Events, crate: Path) -> int:
    """The id of crate's first build (the two projects' events interleave)."""
    event = expect(
        events,
        lambda e: e.get("event") == protocol.BUILD_FINISHED and e["project"] == str(crate),
    )
    assert event["build"]["outcome"] == "success"
    build_id: int = event["build"]["id"]
    return build_id


def running(events: Events, crate: Path, build_id: int, where: Path) -> dict[str, int]:
    """The ready instance of build_id and its sleepers, by name (`app` for itself)."""
    started = expect(events, is_app(APP_STARTED, project=str(crate), build_id=build_id))
    expect(events, is_app(APP_READY, pid=started["pid"]))
    return {"app": started["pid"], **children_of(where, started["pid"])}


def test_no_process_of_an_app_outlives_it(rbd: Rbd, tmp_path: Path, pids: Path) -> None:
    """Two apps that start sleepers every way out of their group: one ignores SIGTERM (its
    sleepers too: only SIGKILL ends them), the other exits on it and leaves its sleepers
    orphaned. Restarts, `rbd stop` and `rbd shutdown` leave none of them."""
    stubborn_port, polite_port = free_port(), free_port()
    stubborn = server_crate(
        tmp_path / "stubborn",
        "stubborn",
        rbd_toml=f'stop_timeout_s = 0.5\nrun_args = ["--port", "{stubborn_port}"]\n'
        f'run_env = {{ APP_IGNORE_TERM = "1", APP_CHILDREN = "{pids}" }}\n',
    )
    polite = server_crate(
        tmp_path / "polite",
        "polite",
        rbd_toml=f'run_args = ["--port", "{polite_port}"]\n'
        f'run_env = {{ APP_CHILDREN = "{pids}" }}\n',
    )
    rbd.start_daemon()
    events = rbd.events()
    daemon = rbd.daemon_pid()
    scope = scope_of(rbd.store)
    rbd.ok("start", "--run", cwd=stubborn)
    rbd.ok("start", "--run", cwd=polite)
    s1 = running(events, stubborn, first_build(events, stubborn), pids)
    p1 = running(events, polite, first_build(events, polite), pids)
    # The marker finds every one of them (what the checks below rely on).
    assert set(s1.values()) | set(p1.values()) <= marked(scope)

    # A restart: SIGTERM is ignored, so SIGKILL after stop_timeout_s, to all of them.
    (stubborn / "src" / "main.rs").write_text(server_rs("v2"))
    build = finished(events, project=str(stubborn), trigger=["src/main.rs"])
    exited = expect(events, is_app(APP_EXITED, pid=s1["app"]))
    assert exited["expected"] is True and exited["signal"] == signal.SIGKILL
    s2 = running(events, stubborn, build["id"], pids)
    assert left_behind(s1) == {}
    ready = seen(events, APP_READY, pid=s2["app"])[0]
    assert ready["app"]["replaced_exit"] == -signal.SIGKILL
    assert ready["app"]["stop_s"] >= 0.5
    assert get(stubborn_port) == "v2"

    # A restart: the app exits on SIGTERM; its sleepers, orphans now, go too.
    (polite / "src" / "main.rs").write_text(server_rs("v2"))
    build = finished(events, project=str(polite), trigger=["src/main.rs"])
    p2 = running(events, polite, build["id"], pids)
    assert left_behind(p1) == {}
    assert seen(events, APP_READY, pid=p2["app"])[0]["app"]["replaced_exit"] == 0
    assert no_zombie_under(daemon)

    rbd.ok("stop", cwd=stubborn)
    assert left_behind(s2) == {}
    assert no_zombie_under(daemon)
    assert set(p2.values()) <= marked(scope)
    rbd.ok("start", "--run", cwd=stubborn)
    s3 = running(events, stubborn, finished(events, project=str(stubborn))["id"], pids)

    assert "stopped" in rbd.ok("shutdown")
    assert left_behind(s3 | {f"polite {k}": v for k, v in p2.items()}) == {}
    assert marked(scope) == set()
    assert wait_gone(daemon, 10)
    # Both ports are free again: nothing holds them.
    for port in (stubborn_port, polite_port):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", port))
