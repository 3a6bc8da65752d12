"""Run mode (issue 14): save → serving, what clients see while the app restarts, rbd's
own share of a restart, and what restarts leave behind.

Run from the repository root after `.ci/setup`:

    .venv/bin/python benchmarks/serve_loop.py [--edits 20] [--restarts 50]
        [--peer-restarts 5] [--as-shipped 10] [--standalone 20]
        [--tools rbd-listen,rbd,cargo-watch,watchexec,bacon]
        [--install-peers] [--quick] [--write]

Every tool gets its own copy of benchmarks/example (a std-only web server) on a
free port of its own. The copy takes its listening socket from fd 3 when
LISTEN_FDS is set (rbd's `listen`), else binds the port itself; and it shrugs off
a connection's failed read or write, where the example ends the server (see
FATAL_IO). The tools:

- `rbd-listen`: rbd's run mode with `listen` (rbd holds the socket across restarts);
- `rbd`: run mode without it (each instance binds the port itself);
- `cargo-watch`: `cargo watch -x run`;
- `watchexec`: `watchexec -r -e rs -- cargo run`;
- `bacon`: bacon's `run-long` job (a bacon.toml in the copy), `bacon --headless`.

All of them watch at once; each round edits every tool's copy once (the greeting
in src/handlers.rs, a new text each time), one tool after the other, in an order
rotated by one each round, so a slow phase of the shared machine is spread over
the tools. Per edit, from the write of the file:

- figure A, save → serving: a probe sends `GET /hello/bench` every 2 ms until an
  answer carries the new text (its arrival is the time); p50 and worst;
- figure B: a second client sends a request every 10 ms on its own schedule from
  just before the write to 0.3 s after the new text is served; every refused,
  reset, timed-out, unanswered or malformed answer counts. Downtime per save is
  the probe's gap between the last answer of the old instance and the first of
  the new;
- rbd's own restart cost: save → serving minus the build (cargo's wall, from
  the build summary) minus the app's own start, measured standalone at the end
  (exec → first answer, 1 ms polling; with the socket passed as fd 3 for the
  listen variant, binding itself for the other): goal ≤ 30 ms at the p50. Its
  parts as rbd records them are shown beside it (the settle time is one).

Then orphans: a copy whose app spawns two `sleep 1000` children, one in its
process group and one in a group of its own (`process_group(0)`), is restarted
`--restarts` times by edits under rbd with `listen` (`rbd build` would not do:
rbd keeps a running app whose binary did not change), and `--peer-restarts`
times under each peer. Left behind = processes carrying the copy's environment
mark (and, under rbd, rbd's RBD_BUILD marker) other than the live instance and
its children; then after `rbd stop` (for a peer: SIGINT to its process group, as
Ctrl-C would) nothing should be left at all. Goal: 0 for rbd.

Besides, the example as shipped (ended by a client that hangs up early) is started
`--as-shipped` times under rbd with `listen`, and each start that ends within
1 s of rbd calling it ready is counted: rbd's readiness GET must not be such a
client (goal 0).

Peers are found on PATH and in ~/.cache/rbd-bench/peers/bin; `--install-peers`
installs the missing ones there first (`cargo install --locked --root`). A peer
that is not installed is skipped with a note. Everything the benchmark starts
carries a token in its environment; whatever still carries it at the end is
killed and reported.

`--quick` (a smoke test, numbers meaningless) runs rbd's two variants only, one
edit, two restarts; `--write` appends the report to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import Row, ms, remove_shared_cache  # noqa: E402
from benchmarks.daemon_loop import heading  # noqa: E402
from tests.conftest import Events, Rbd  # noqa: E402

EXAMPLE = ROOT / "benchmarks" / "example"
HANDLERS = Path("src") / "handlers.rs"
MAIN = Path("src") / "main.rs"
BIN = "hello-web"

EDITS, QUICK_EDITS = 20, 1
RESTARTS, QUICK_RESTARTS = 50, 2
PEER_RESTARTS = 5
STANDALONE_RUNS, QUICK_STANDALONE_RUNS = 20, 2
AS_SHIPPED_STARTS, QUICK_AS_SHIPPED_STARTS = 10, 1

RESTART_GOAL_S = 0.030
PROBE_PERIOD_S = 0.002
CLIENT_PERIOD_S = 0.010
# The 10 ms client keeps going this long after the new text is served: a tool
# that restarts twice, or drops connections late, is counted too.
TAIL_S = 0.3
REQUEST_TIMEOUT_S = 5.0
# A first `cargo run` compiles the example from scratch; on 2 shared cores that
# can take a while.
START_WAIT_S = 240.0
EDIT_WAIT_S = 90.0

PEER_CACHE = Path.home() / ".cache" / "rbd-bench" / "peers"
# tool name: (executable, crate that installs it)
PEERS: dict[str, tuple[str, str]] = {
    "cargo-watch": ("cargo-watch", "cargo-watch"),
    "watchexec": ("watchexec", "watchexec-cli"),
    "bacon": ("bacon", "bacon"),
}
RBD_TOOLS = ("rbd-listen", "rbd")
ALL_TOOLS = (*RBD_TOOLS, *PEERS)
LABELS = {"rbd-listen": "rbd (listen)", "rbd": "rbd (no listen)"}

# How each peer restarts `cargo run` on a change, as its documentation says,
# with its default debounce.
PEER_ARGV: dict[str, Callable[[str], list[str]]] = {
    "cargo-watch": lambda exe: [exe, "watch", "-x", "run"],
    "watchexec": lambda exe: [exe, "-r", "-e", "rs", "--", "cargo", "run"],
    "bacon": lambda exe: [exe, "--headless", "run-long"],
}
BACON_TOML = """[jobs.run-long]
command = ["cargo", "run"]
need_stdout = true
background = false
on_change_strategy = "kill_then_restart"
allow_warnings = true
"""

# The example binds its port itself; the copies may be handed the socket instead.
BIND = 'TcpListener::bind("127.0.0.1:3000")?'
# The example ends on the first failed read or write of a connection (`?` in main):
# a client that hangs up before the whole answer is written (rbd's readiness GET
# reads 5 bytes and closes) stops the server. The copies shrug such errors off, as
# any real server does, so that what is measured is the restart, not that; the
# example as shipped is tried under rbd once (`survives_readiness`).
FATAL_IO = {
    "http::read_request(&mut stream)?": "http::read_request(&mut stream).unwrap_or(None)",
    "http::write_response(&mut stream, &response)?;": (
        "let _ = http::write_response(&mut stream, &response);"
    ),
}
LISTENER_RS = """
/// The listening socket: fd 3 when the launcher passes one (LISTEN_FDS, the
/// convention rbd's `listen` follows), else bound here.
fn listener() -> std::io::Result<TcpListener> {
    match inherited() {
        Some(listener) => Ok(listener),
        None => TcpListener::bind("127.0.0.1:PORT"),
    }
}

#[cfg(unix)]
fn inherited() -> Option<TcpListener> {
    use std::os::unix::io::FromRawFd;
    std::env::var_os("LISTEN_FDS")?;
    // SAFETY: with LISTEN_FDS set, fd 3 is a listening TCP socket given to this process.
    Some(unsafe { TcpListener::from_raw_fd(3) })
}

#[cfg(not(unix))]
fn inherited() -> Option<TcpListener> {
    None
}
"""
CHILDREN_RS = """
/// Children a restart must not leave behind: one in the app's process group, one
/// in a group of its own.
fn spawn_children() -> std::io::Result<()> {
    std::process::Command::new("sleep").arg("1000").spawn()?;
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sleep").arg("1000").process_group(0).spawn()?;
    }
    Ok(())
}
"""

TOKEN_VAR = "RBD_BENCH_TOKEN"
APP_VAR = "RBD_BENCH_APP"
MARKER = "RBD_BUILD"


# --- HTTP -------------------------------------------------------------------------


def get(port: int, timeout: float = REQUEST_TIMEOUT_S) -> tuple[str, str]:
    """One `GET /hello/bench` on a new connection: ("ok", body) or (failure kind, detail)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
            # One segment: the example reads one buffer, and closing with unread
            # bytes would make its kernel answer with a reset.
            conn.sendall(b"GET /hello/bench HTTP/1.0\r\n\r\n")
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except ConnectionRefusedError:
        return "refused", ""
    except ConnectionResetError:
        return "reset", ""
    except TimeoutError:
        return "timeout", ""
    except OSError as exc:
        return type(exc).__name__, str(exc)
    data = b"".join(chunks)
    if not data:
        return "closed unanswered", ""
    if not data.startswith(b"HTTP/1.1 200"):
        return "malformed", data[:80].decode(errors="replace")
    return "ok", data.partition(b"\r\n\r\n")[2].decode(errors="replace")


def says(body: str, token: str) -> bool:
    return f'"Hello {token}, bench!"' in body


@dataclass
class Probe:
    """The 2 ms probe's view of one edit."""

    served_at: float
    # The last answer of the old instance (None: none came after the write).
    last_old_at: float | None


def probe_until(port: int, token: str, since: float, timeout: float) -> Probe:
    """Poll every PROBE_PERIOD_S until an answer carries token; raises after timeout."""
    deadline = time.monotonic() + timeout
    last_old: float | None = None
    seen: Counter[str] = Counter()
    while time.monotonic() < deadline:
        sent = time.time()
        kind, body = get(port)
        done = time.time()
        if kind == "ok":
            if says(body, token):
                return Probe(done, last_old)
            last_old = done
        seen[kind] += 1
        time.sleep(max(0.0, sent + PROBE_PERIOD_S - time.time()))
    raise AssertionError(
        f"port {port} did not serve {token!r} within {timeout:.0f} s of the write "
        f"(answers: {dict(seen)}; {time.time() - since:.1f} s since)"
    )


class Client(threading.Thread):
    """Sends a request every CLIENT_PERIOD_S on a fixed schedule until stopped; a slot
    missed while a request was still waiting is skipped, not made up."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.sent = 0
        self.failed: Counter[str] = Counter()
        self.slowest = 0.0
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        slot = 0
        while not self._halt.is_set():
            begin = time.monotonic()
            kind, _ = get(self.port)
            self.sent += 1
            self.slowest = max(self.slowest, time.monotonic() - begin)
            if kind != "ok":
                self.failed[kind] += 1
            slot = max(slot + 1, int((time.monotonic() - start) / CLIENT_PERIOD_S) + 1)
            self._halt.wait(max(0.0, start + slot * CLIENT_PERIOD_S - time.monotonic()))

    def finish(self) -> None:
        self._halt.set()
        self.join(REQUEST_TIMEOUT_S + 1)


# --- processes --------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    sid: int
    start: int
    comm: str


def _proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    comm = stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode(errors="replace")
    fields = stat[stat.rfind(b")") + 2 :].split()
    if fields[0] == b"Z":
        return None  # exited, holds nothing
    return Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), int(fields[19]), comm)


def _environ(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def live_processes() -> list[Proc]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and (proc := _proc(int(name))) is not None:
            found.append(proc)
    return found


def carrying(*entries: str, prefixes: tuple[str, ...] = ()) -> list[Proc]:
    """Live processes (not this one) whose environment holds every entry (KEY=value)
    and an entry starting with each prefix."""
    wanted = [entry.encode() for entry in entries]
    starts = [prefix.encode() for prefix in prefixes]
    found = []
    for proc in live_processes():
        if proc.pid == os.getpid():
            continue
        env = _environ(proc.pid)
        if all(w in env for w in wanted) and all(any(e.startswith(s) for e in env) for s in starts):
            found.append(proc)
    return found


def kill_all(procs: list[Proc], timeout: float = 5.0) -> None:
    """SIGKILL each process (that is still the one found) and wait until all are gone."""
    for proc in procs:
        now = _proc(proc.pid)
        if now is not None and now.start == proc.start:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((now := _proc(p.pid)) is None or now.start != p.start for p in procs):
            return
        time.sleep(0.01)


def kill_session(process: subprocess.Popen[bytes]) -> None:
    """Stop a watcher started in a session of its own, and everything in that session
    (a peer may put the app in a process group of its own)."""
    members = [p for p in live_processes() if p.sid == process.pid]
    for proc in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(proc.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    kill_all([p for p in live_processes() if p.sid == process.pid] + members)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)


def app_pids(root: Path) -> set[int]:
    """The live instances of the example's binary running in root."""
    found = set()
    for proc in live_processes():
        if proc.comm == BIN:
            with contextlib.suppress(OSError):
                if os.path.realpath(f"/proc/{proc.pid}/cwd") == os.path.realpath(root):
                    found.add(proc.pid)
    return found


def settle_apps(root: Path, quiet_s: float = 2.0, limit_s: float = 60.0) -> None:
    """Wait until the set of app instances in root has not changed for quiet_s."""
    deadline = time.monotonic() + limit_s
    last = app_pids(root)
    changed = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.1)
        now = app_pids(root)
        if now != last:
            last, changed = now, time.monotonic()
        elif last and time.monotonic() - changed >= quiet_s:
            return
    raise AssertionError(f"the app in {root} did not settle within {limit_s:.0f} s")


def left_over(procs: list[Proc]) -> list[Proc]:
    """What is left of replaced instances: all but the newest app process and its
    children. An app process is the example's binary; the rest are its sleeps."""
    apps = [p for p in procs if p.comm == BIN]
    live = max(apps, key=lambda p: p.start) if apps else None
    return [p for p in procs if live is None or (p.pid != live.pid and p.ppid != live.pid)]


def describe(procs: list[Proc]) -> str:
    kinds = Counter(p.comm for p in procs)
    return ", ".join(f"{n} {comm}" for comm, n in sorted(kinds.items()))


# --- the copies -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Copy:
    """One tool's copy of the example, and the text it should be serving."""

    root: Path
    port: int
    token: str = "e0"

    def edit(self, token: str) -> float:
        """Write a new greeting; returns the time just before the write."""
        self.token = token
        path = self.root / HANDLERS
        text = path.read_text()
        start = text.index('let greeting = "') + len('let greeting = "')
        end = text.index('"', start)
        new = text[:start] + f"Hello {token}" + text[end:]
        written = time.time()
        path.write_text(new)
        return written


def make_copy(into: Path, *, children: bool = False, as_shipped: bool = False) -> Copy:
    """A copy of the example (without its target/) on a free port. children: the app
    spawns the two sleeps; as_shipped: a connection's I/O error still ends the server."""
    shutil.copytree(EXAMPLE, into, ignore=shutil.ignore_patterns("target"))
    port = free_port()
    main = into / MAIN
    text = main.read_text()
    expected = [BIND, "127.0.0.1:3000", *FATAL_IO]
    if any(part not in text for part in expected):
        raise AssertionError(f"{EXAMPLE / MAIN} has changed: it no longer holds {expected}")
    text = text.replace(BIND, "listener()?").replace("127.0.0.1:3000", f"127.0.0.1:{port}")
    if not as_shipped:
        for fatal, tolerant in FATAL_IO.items():
            text = text.replace(fatal, tolerant)
    if children:
        text = text.replace("listener()?;", "listener()?;\n    spawn_children()?;", 1)
        text += CHILDREN_RS
    main.write_text(text + LISTENER_RS.replace("PORT", str(port)))
    (into / ".gitignore").write_text("/target\n")
    copy = Copy(into, port)
    copy.edit(copy.token)
    return copy


def run_mode(copy: Copy, *, listen: bool, run_env: dict[str, str] | None = None) -> Copy:
    """Turn on rbd's run mode in the copy's [package.metadata.rbd]; listen: rbd holds
    the copy's port and passes it as fd 3."""
    keys: dict[str, Any] = {"run": True}
    if listen:
        keys["listen"] = [f"127.0.0.1:{copy.port}"]
    if run_env:
        keys["run_env"] = run_env
    cargo_toml = copy.root / "Cargo.toml"
    section = "[package.metadata.rbd]\n"
    text = cargo_toml.read_text()
    if section not in text:
        text += "\n" + section
    lines = "".join(f"{key} = {toml_value(value)}\n" for key, value in keys.items())
    cargo_toml.write_text(text.replace(section, section + lines, 1))
    return copy


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return str(value)


# --- the tools --------------------------------------------------------------------


@dataclass
class Edit:
    """One measured edit."""

    serving_s: float
    downtime_s: float
    # rbd only: the build summary and the APP summary of the restart.
    build: dict[str, Any] | None = None
    app: dict[str, Any] | None = None


@dataclass
class Outcome:
    edits: list[Edit] = field(default_factory=list)
    sent: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    slowest_s: float = 0.0
    error: str | None = None


class RbdTool:
    """One project of the benchmark's private daemon, in run mode."""

    def __init__(self, name: str, rbd: Rbd, copy: Copy) -> None:
        self.name = name
        self.rbd = rbd
        self.copy = copy
        self.events: Events | None = None
        self.pid: int | None = None

    def mine(self, event: dict[str, Any], name: str) -> bool:
        return event.get("event") == name and _same(event.get("project"), self.copy.root)

    def start(self, probe: bool = True) -> None:
        self.events = self.rbd.events()
        self.rbd.ok("start", str(self.copy.root))
        if probe:
            probe_until(self.copy.port, self.copy.token, time.time(), START_WAIT_S)
        self.restarted()

    def drain(self) -> None:
        """Take in the events that came so far without waiting for one."""
        assert self.events is not None
        while not self.events.queue.empty():
            self.events.seen.append(self.events.queue.get())

    def mark(self) -> int:
        assert self.events is not None
        return len(self.events.seen)

    def details(self, mark: int) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The build and the restart that followed the edit: waits for the app_ready of
        a new instance, then takes the last build summary seen since mark."""
        assert self.events is not None
        ready = self.restarted()
        builds = [e["build"] for e in self.events.seen[mark:] if self.mine(e, "build_finished")]
        return (builds[-1] if builds else None), ready.get("app")

    def restarted(self) -> dict[str, Any]:
        """Wait for the app_ready event of an instance other than the last one seen."""
        assert self.events is not None
        old = self.pid
        ready = self.events.wait_for(
            lambda e: self.mine(e, "app_ready") and e.get("pid") != old, EDIT_WAIT_S
        )
        self.pid = int(ready["pid"])
        return ready

    def stop(self) -> None:
        self.rbd.run("stop", str(self.copy.root))


def _same(project: Any, root: Path) -> bool:
    return isinstance(project, str) and os.path.realpath(project) == os.path.realpath(root)


class PeerTool:
    """Another watcher, run in a session of its own in its copy."""

    def __init__(self, name: str, argv: list[str], copy: Copy, env: dict[str, str], log: Path):
        self.name = name
        self.argv = argv
        self.copy = copy
        self.env = env
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.name == "bacon":
            (self.copy.root / "bacon.toml").write_text(BACON_TOML)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                cwd=self.copy.root,
                env=self.env,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            probe_until(self.copy.port, self.copy.token, time.time(), START_WAIT_S)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its output: {self.tail()}") from None
        # A watcher may react to its own first build once more (cargo-watch 8 runs
        # `cargo run` twice at start): measure from a quiet state.
        settle_apps(self.copy.root)
        probe_until(self.copy.port, self.copy.token, time.time(), START_WAIT_S)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-600:]
        except OSError:
            return ""

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the watcher's process group, then wait for it a while."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def stop(self) -> None:
        if self.process is not None:
            kill_session(self.process)


Tool = RbdTool | PeerTool


def measure_edit(tool: Tool, token: str, into: Outcome) -> None:
    """One edit of the tool's copy, measured (figures A and B)."""
    copy = tool.copy
    mark = tool.mark() if isinstance(tool, RbdTool) else 0
    client = Client(copy.port)
    client.start()
    try:
        written = copy.edit(token)
        probe = probe_until(copy.port, token, written, EDIT_WAIT_S)
        time.sleep(TAIL_S)
    finally:
        client.finish()
    into.sent += client.sent
    into.failed.update(client.failed)
    into.slowest_s = max(into.slowest_s, client.slowest)
    last_old = probe.last_old_at if probe.last_old_at is not None else written
    edit = Edit(probe.served_at - written, probe.served_at - last_old)
    if isinstance(tool, RbdTool):
        edit.build, edit.app = tool.details(mark)
    into.edits.append(edit)


def rounds(tools: list[Tool], edits: int) -> dict[str, Outcome]:
    """Each round edits every tool's copy once, in an order rotated by one per round."""
    outcomes = {tool.name: Outcome() for tool in tools}
    for i in range(1, edits + 1):
        live = [t for t in tools if outcomes[t.name].error is None]
        if not live:
            break
        shift = (i - 1) % len(live)
        for tool in live[shift:] + live[:shift]:
            try:
                measure_edit(tool, f"e{i}", outcomes[tool.name])
            except AssertionError as exc:
                tail = f"; its output: {tool.tail()}" if isinstance(tool, PeerTool) else ""
                outcomes[tool.name].error = f"edit {i}: {exc}{tail}"
        print(f"  round {i}/{edits} done", file=sys.stderr, flush=True)
    return outcomes


# --- the app's own start ----------------------------------------------------------


def standalone_start(binary: Path, port: int, runs: int, passed: bool) -> list[float]:
    """Exec → first answer of the built app alone, runs times. passed: a listening
    socket is handed over as fd 3 (what rbd's `listen` does), else the app binds port.

    Started with posix_spawn (no fork of this Python process, whose copy would cost
    more than the app's start), polled every 1 ms; with the socket passed, the first
    GET waits in its backlog and is answered the moment the app accepts.
    """
    server = socket.create_server(("127.0.0.1", port)) if passed else None
    env = {k: v for k, v in os.environ.items() if k not in ("LISTEN_FDS", "LISTEN_PID")}
    actions: list[tuple[Any, ...]] = [
        (os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)
    ]
    high = -1
    if server is not None:
        env["LISTEN_FDS"] = "1"
        # Above 3, so that the dup2 onto 3 is a real one (which clears close-on-exec).
        high = fcntl.fcntl(server.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
        actions.append((os.POSIX_SPAWN_DUP2, high, 3))
    took = []
    try:
        for _ in range(runs):
            begin = time.perf_counter()
            pid = os.posix_spawn(str(binary), [str(binary)], env, file_actions=actions)
            try:
                while True:
                    kind, _ = get(port)
                    if kind == "ok":
                        took.append(time.perf_counter() - begin)
                        break
                    done, status = os.waitpid(pid, os.WNOHANG)
                    if done == pid:
                        pid = 0
                        code = os.waitstatus_to_exitcode(status)
                        raise AssertionError(f"{binary} exited with {code}")
                    time.sleep(0.001)
            finally:
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
    finally:
        if high >= 0:
            os.close(high)
        if server is not None:
            server.close()
    return took


# --- orphans ----------------------------------------------------------------------


@dataclass
class Orphans:
    restarts: int
    # Left by the restarts; left before them, by the tool's own start-up.
    left: list[Proc]
    at_start: list[Proc]
    after_stop: list[Proc]


def rbd_orphans(rbd: Rbd, base: Path, restarts: int, token: str) -> Orphans:
    """Restarts (edits) of an app that spawns children; what is left after them, and
    after `rbd stop`."""
    mark = f"orphans-{token}"
    copy = run_mode(
        make_copy(base / "orphans", children=True), listen=True, run_env={APP_VAR: mark}
    )
    tool = RbdTool("rbd-orphans", rbd, copy)

    def marked() -> list[Proc]:
        return left_over(carrying(f"{APP_VAR}={mark}", prefixes=(f"{MARKER}=",)))

    try:
        tool.start()
        at_start = marked()
        # Edits, not `rbd build`: a build that leaves the binary as it was does not
        # restart an app that runs (by design).
        for i in range(1, restarts + 1):
            written = copy.edit(f"o{i}")
            probe_until(copy.port, copy.token, written, EDIT_WAIT_S)
            tool.restarted()
        left = [p for p in marked() if p not in at_start]
    finally:
        tool.stop()
    return Orphans(restarts, left, at_start, wait_none_left(f"{APP_VAR}={mark}"))


def survives_readiness(rbd: Rbd, base: Path, starts: int) -> tuple[int, str]:
    """Start the example as shipped (a connection's I/O error ends it) under rbd with
    `listen`, starts times (edits): in how many it ended within 1 s of rbd calling it
    ready, and its last output line then."""
    copy = run_mode(make_copy(base / "as-shipped", as_shipped=True), listen=True)
    tool = RbdTool("as-shipped", rbd, copy)
    ended = 0
    said = ""
    try:
        # No probe of ours: if rbd's GET ends the app, a probe would wait in the
        # backlog of rbd's socket until the next start.
        tool.start(probe=False)
        for i in range(starts):
            if i:
                copy.edit(f"s{i}")
                tool.restarted()
            pid = tool.pid
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and _proc(pid or 0) is not None:
                time.sleep(0.01)
            if _proc(pid or 0) is None:
                ended += 1
                time.sleep(0.2)  # its last output line may be on its way
                tool.drain()
                assert tool.events is not None
                lines = [
                    line
                    for e in tool.events.seen
                    if tool.mine(e, "app_output") and e.get("pid") == pid
                    for line in e.get("lines", [])
                ]
                said = lines[-1] if lines else said
        return ended, said
    finally:
        tool.stop()


def wait_none_left(entry: str, timeout: float = 5.0) -> list[Proc]:
    """What still carries entry after up to timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = carrying(entry)
        if not found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def peer_orphans(
    name: str, argv: list[str], base: Path, env: dict[str, str], restarts: int, token: str
) -> Orphans:
    """The same under a peer, restarted by edits."""
    mark = f"orphans-{name}-{token}"
    copy = make_copy(base / f"orphans-{name}", children=True)
    tool = PeerTool(name, argv, copy, {**env, APP_VAR: mark}, base / f"orphans-{name}.log")

    def apps(procs: list[Proc]) -> list[Proc]:
        # The watcher and its cargo carry the mark too: only the app and its sleeps count.
        return [p for p in procs if p.comm in (BIN, "sleep")]

    try:
        tool.start()
        at_start = left_over(apps(carrying(f"{APP_VAR}={mark}")))
        for i in range(1, restarts + 1):
            written = copy.edit(f"o{i}")
            probe_until(copy.port, copy.token, written, EDIT_WAIT_S)
        time.sleep(TAIL_S)
        left = [p for p in left_over(apps(carrying(f"{APP_VAR}={mark}"))) if p not in at_start]
        tool.interrupt()
        after = apps(wait_none_left(f"{APP_VAR}={mark}"))
        return Orphans(restarts, left, at_start, after)
    finally:
        tool.stop()
        kill_all(carrying(f"{APP_VAR}={mark}"))


# --- peers ------------------------------------------------------------------------


def peer_path() -> str:
    """PATH with the peers' cache bin dir first (where --install-peers puts them)."""
    return f"{PEER_CACHE / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"


def install_peers(wanted: list[str]) -> None:
    """`cargo install --locked` the peers not found, into PEER_CACHE."""
    for name in wanted:
        exe, crate = PEERS[name]
        if shutil.which(exe, path=peer_path()):
            continue
        print(f"installing {crate} into {PEER_CACHE} ...", file=sys.stderr, flush=True)
        done = subprocess.run(
            ["cargo", "install", "--locked", "--root", str(PEER_CACHE), crate], check=False
        )
        if done.returncode != 0:
            print(f"installing {crate} failed ({done.returncode})", file=sys.stderr)


def peer_version(name: str, exe: str) -> str:
    argv = [exe, "watch", "--version"] if name == "cargo-watch" else [exe, "--version"]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "version unknown"
    # "cargo-watch 8.5.3", "watchexec 2.8.0 (date) +pid1\n...", "bacon 3.x.y"
    words = (out.stdout or out.stderr).strip().splitlines()[:1]
    first = words[0].split() if words else []
    return first[1] if len(first) > 1 else "version unknown"


# --- the whole run ----------------------------------------------------------------


@dataclass
class Options:
    edits: int = EDITS
    restarts: int = RESTARTS
    peer_restarts: int = PEER_RESTARTS
    standalone: int = STANDALONE_RUNS
    tools: tuple[str, ...] = ALL_TOOLS
    as_shipped: int = AS_SHIPPED_STARTS


QUICK = Options(
    QUICK_EDITS, QUICK_RESTARTS, 0, QUICK_STANDALONE_RUNS, RBD_TOOLS, QUICK_AS_SHIPPED_STARTS
)


@dataclass
class Measured:
    options: Options
    outcomes: dict[str, Outcome]
    skipped: dict[str, str]
    versions: dict[str, str]
    start_s: dict[str, list[float]]
    orphans: dict[str, Orphans]
    orphan_errors: dict[str, str]
    # The example as shipped under rbd with listen: how many of its starts ended
    # after rbd's readiness GET, and its last line (None: not tried).
    as_shipped: tuple[int, str] | None
    as_shipped_error: str | None
    swept: list[Proc]


@contextlib.contextmanager
def daemon(base: Path, token: str) -> Iterator[Rbd]:
    base.mkdir()
    rbd = Rbd(base)
    rbd.env[TOKEN_VAR] = token
    try:
        rbd.start_daemon()
        yield rbd
    finally:
        rbd.close()


def measure(options: Options) -> Measured:
    token = secrets.token_hex(6)
    base = Path(tempfile.mkdtemp(prefix="rbd-serve-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RBD_", "CARGO_TARGET"))}
    env.update({"PATH": peer_path(), TOKEN_VAR: token, "CARGO_TERM_COLOR": "never"})
    skipped: dict[str, str] = {}
    versions: dict[str, str] = {}
    peers: dict[str, list[str]] = {}
    for name in (t for t in options.tools if t in PEERS):
        exe = shutil.which(PEERS[name][0], path=env["PATH"])
        if exe is None:
            skipped[name] = "not installed (benchmarks/serve_loop.py --install-peers)"
            continue
        peers[name] = PEER_ARGV[name](exe)
        versions[name] = peer_version(name, exe)
    outcomes: dict[str, Outcome] = {}
    start_s: dict[str, list[float]] = {}
    orphans: dict[str, Orphans] = {}
    orphan_errors: dict[str, str] = {}
    copies: dict[str, Copy] = {}
    as_shipped: tuple[int, str] | None = None
    as_shipped_error: str | None = None
    try:
        with daemon(base / "daemon", token) as rbd:
            tools: list[Tool] = []
            try:
                for name in options.tools:
                    if name in RBD_TOOLS:
                        copy = make_copy(base / f"copy-{name}")
                        copies[name] = run_mode(copy, listen=name == "rbd-listen")
                        tools.append(RbdTool(name, rbd, copy))
                    elif name in peers:
                        copy = make_copy(base / f"copy-{name}")
                        tools.append(PeerTool(name, peers[name], copy, env, base / f"{name}.log"))
                started: list[Tool] = []
                for tool in tools:
                    print(f"starting {tool.name} ...", file=sys.stderr, flush=True)
                    try:
                        tool.start()
                        started.append(tool)
                    except AssertionError as exc:
                        outcomes[tool.name] = Outcome(error=f"start: {exc}")
                        tool.stop()
                outcomes.update(rounds(started, options.edits))
            finally:
                for tool in tools:
                    tool.stop()
            if any(t in RBD_TOOLS for t in options.tools):
                try:
                    as_shipped = survives_readiness(rbd, base, options.as_shipped)
                except AssertionError as exc:
                    as_shipped_error = str(exc)
            if any(t in RBD_TOOLS for t in options.tools) and options.restarts > 0:
                print(f"orphans: {options.restarts} restarts under rbd ...", file=sys.stderr)
                try:
                    orphans["rbd-listen"] = rbd_orphans(rbd, base, options.restarts, token)
                except AssertionError as exc:
                    orphan_errors["rbd-listen"] = str(exc)
        for name, argv in peers.items():
            if options.peer_restarts <= 0:
                break
            print(f"orphans: {options.peer_restarts} restarts under {name} ...", file=sys.stderr)
            try:
                orphans[name] = peer_orphans(name, argv, base, env, options.peer_restarts, token)
            except AssertionError as exc:
                orphan_errors[name] = str(exc)
        # The app's own start, alone (nothing else of the benchmark runs now).
        for name, copy in copies.items():
            passed = name == "rbd-listen"
            binary = copy.root / "target" / "debug" / BIN
            if binary.exists():
                port = free_port() if passed else copy.port
                start_s[name] = standalone_start(binary, port, options.standalone, passed)
    finally:
        swept = carrying(f"{TOKEN_VAR}={token}")
        kill_all(swept)
        shutil.rmtree(base, ignore_errors=True)
    return Measured(
        options,
        outcomes,
        skipped,
        versions,
        start_s,
        orphans,
        orphan_errors,
        as_shipped,
        as_shipped_error,
        swept,
    )


# --- rows -------------------------------------------------------------------------


def label(name: str) -> str:
    return LABELS.get(name, name)


def p50_worst(values: list[float]) -> str:
    return f"{ms(statistics.median(values))} / {ms(max(values))}"


def rows(m: Measured) -> list[Row]:
    n = m.options.edits
    out: list[Row] = [
        (
            "method",
            "all tools watch at once; each round edits every tool's copy once, in an order "
            f"rotated per round; {n} rounds",
            None,
            None,
        )
    ]
    if m.versions:
        peers = ", ".join(f"{name} {version}" for name, version in m.versions.items())
        out.append(("peers", peers, None, None))
    base_name = "rbd-listen" if "rbd-listen" in m.outcomes else None
    base_p50 = _p50(m.outcomes.get(base_name)) if base_name else None
    for name in m.options.tools:
        if name in m.skipped:
            out.append((f"{label(name)}: save → serving", m.skipped[name], None, None))
            continue
        outcome = m.outcomes.get(name)
        if outcome is None:
            continue
        if outcome.error is not None:
            out.append((f"{label(name)}: failed", outcome.error[:300], None, None))
        if not outcome.edits:
            continue
        serving = [e.serving_s for e in outcome.edits]
        out.append(
            (
                f"A. {label(name)}: save → serving, p50 / worst over {len(serving)} edits",
                p50_worst(serving),
                None,
                None,
            )
        )
        if base_p50 is not None and name != base_name:
            out.append(
                (
                    f"A. ratio {label(name)} / rbd (listen), save → serving p50",
                    f"{statistics.median(serving) / base_p50:.2f}",
                    None,
                    None,
                )
            )
    for name in m.options.tools:
        outcome = m.outcomes.get(name)
        if outcome is None or not outcome.edits:
            continue
        failed = sum(outcome.failed.values())
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(outcome.failed.items()))
        listen = name == "rbd-listen"
        out.append(
            (
                f"B. {label(name)}: requests failed, one every 10 ms over the "
                f"{len(outcome.edits)} restarts",
                f"{failed} of {outcome.sent}" + (f" ({kinds})" if kinds else ""),
                "0" if listen else None,
                (failed == 0) if listen else None,
            )
        )
        downtime = [e.downtime_s for e in outcome.edits]
        out.append(
            (
                f"B. {label(name)}: downtime per save (last answer of the old instance → "
                "first of the new, 2 ms probe), p50 / worst",
                p50_worst(downtime),
                None,
                None,
            )
        )
        if listen:
            out.append(
                (
                    "B. rbd (listen): slowest answer to the 10 ms client",
                    ms(outcome.slowest_s),
                    None,
                    None,
                )
            )
    for name, passed in (("rbd-listen", True), ("rbd", False)):
        starts = m.start_s.get(name)
        outcome = m.outcomes.get(name)
        if not starts or outcome is None:
            continue
        start = statistics.median(starts)
        how = "socket passed as fd 3" if passed else "binding its port"
        out.append(
            (
                f"the app's own start, exec → first answer ({how}), median of {len(starts)}",
                ms(start),
                None,
                None,
            )
        )
        costs = [
            e.serving_s - float(e.build["wall_s"]) - start
            for e in outcome.edits
            if e.build is not None and e.build.get("wall_s") is not None
        ]
        if not costs:
            continue
        cost = statistics.median(costs)
        out.append(
            (
                f"{label(name)}: restart cost = save → serving − build − app's own start, "
                f"p50 over {len(costs)}",
                ms(cost),
                f"≤ {RESTART_GOAL_S * 1000:.0f} ms",
                cost <= RESTART_GOAL_S,
            )
        )
        # The settle (save → cargo spawned) is part of that cost; without it, what is
        # left is the restart proper: recording the build, stopping, starting, ready.
        unsettled = [
            e.serving_s - float(e.build["wall_s"]) - float(e.build["settle_s"]) - start
            for e in outcome.edits
            if e.build is not None
            and e.build.get("wall_s") is not None
            and e.build.get("settle_s") is not None
        ]
        if unsettled:
            out.append(
                (
                    f"{label(name)}: the same less the settle (save → cargo spawned), "
                    f"p50 over {len(unsettled)}",
                    ms(statistics.median(unsettled)),
                    None,
                    None,
                )
            )
        out.append((f"{label(name)}: its parts, medians", _parts(outcome.edits), None, None))
    for name, orphans in m.orphans.items():
        ours = name in RBD_TOOLS
        left = len(orphans.left)
        value = f"{left}" + (f" ({describe(orphans.left)})" if left else "")
        if orphans.at_start:
            value += f"; {len(orphans.at_start)} more left by its start-up"
        out.append(
            (
                f"{label(name)}: processes of replaced instances left by {orphans.restarts} "
                "restarts (edits; the app spawns 2 sleeps, one in a group of its own)",
                value,
                "0" if ours else None,
                (left == 0 and not orphans.at_start) if ours else None,
            )
        )
        stop = "`rbd stop`" if ours else "Ctrl-C (SIGINT to its group)"
        after = len(orphans.after_stop)
        out.append(
            (
                f"{label(name)}: app processes left after {stop}, waited up to 5 s",
                f"{after}" + (f" ({describe(orphans.after_stop)})" if after else ""),
                "0" if ours else None,
                (after == 0) if ours else None,
            )
        )
    if m.as_shipped is not None:
        ended, said = m.as_shipped
        n = m.options.as_shipped
        out.append(
            (
                "the example as shipped (a client hanging up early ends it), under rbd with "
                f"`listen`: starts that ended within 1 s of rbd's readiness GET, of {n}",
                f"{ended}" + (f" (its last line: {said})" if said else ""),
                "0",
                ended == 0,
            )
        )
    if m.as_shipped_error is not None:
        out.append(("the example as shipped, under rbd", m.as_shipped_error[:300], None, None))
    for name, error in m.orphan_errors.items():
        out.append((f"{label(name)}: orphans", f"failed: {error[:300]}", None, None))
    out.append(
        (
            "processes of the benchmark still alive at its end (killed then)",
            f"{len(m.swept)}" + (f" ({describe(m.swept)})" if m.swept else ""),
            "0",
            not m.swept,
        )
    )
    return out


def _p50(outcome: Outcome | None) -> float | None:
    if outcome is None or not outcome.edits:
        return None
    return statistics.median(e.serving_s for e in outcome.edits)


def _parts(edits: list[Edit]) -> str:
    """Medians of rbd's own record of the restarts, per edit: the settle (first change
    seen → cargo spawned), cargo's wall, cargo's end → the old instance stopped
    (recording the build: rbd's serving_s less the parts it records), stopping it,
    spawn → ready; and our save → serving less rbd's serving_s: the write → rbd's first
    change event plus our probe's lag, less how much later than our probe rbd saw the
    app ready (negative where rbd's readiness check lags the app)."""

    def part(key: str, source: str) -> Callable[[Edit], float | None]:
        def get_(edit: Edit) -> float | None:
            record = edit.build if source == "build" else edit.app
            value = None if record is None else record.get(key)
            return float(value) if isinstance(value, int | float) else None

        return get_

    settle, wall = part("settle_s", "build"), part("wall_s", "build")
    stop, ready, serving = part("stop_s", "app"), part("ready_s", "app"), part("serving_s", "app")

    def recording(edit: Edit) -> float | None:
        values = [serving(edit), settle(edit), wall(edit), stop(edit), ready(edit)]
        if any(v is None for v in values):
            return None
        total, *parts = (v or 0.0 for v in values)
        return total - sum(parts)

    def unseen(edit: Edit) -> float | None:
        value = serving(edit)
        return None if value is None else edit.serving_s - value

    def median_of(measure: Callable[[Edit], float | None]) -> str:
        numbers = [v for v in map(measure, edits) if v is not None]
        return ms(statistics.median(numbers)) if numbers else "—"

    return (
        f"our save → serving − rbd's serving_s {median_of(unseen)}, "
        f"settle {median_of(settle)}, build {median_of(wall)}, "
        f"cargo's end → stopping {median_of(recording)}, stop old {median_of(stop)}, "
        f"spawn → ready {median_of(ready)} (rbd's serving_s {median_of(serving)})"
    )


def run(quick: bool) -> list[Row]:
    """The suite's entry point. quick: rbd's two variants, one edit, two restarts."""
    return rows(measure(QUICK if quick else Options()))


NOTES = """Copies of benchmarks/example on free ports, all watched at once; each round edits
every copy once (the greeting), in an order rotated per round. The copies take their
socket from fd 3 under LISTEN_FDS and survive a client that hangs up early (the
example as shipped may not: see its row). Restart cost subtracts cargo's wall (rbd's
build summary) and the app's own start, measured standalone (posix_spawn → first answer).
"""


def write_results(lines: list[str]) -> None:
    """Append the report (heading, notes on the method, table) to RESULTS.md."""
    heading_line, table = lines[0], lines[2:]
    with (ROOT / "benchmarks" / "RESULTS.md").open("a") as f:
        f.write(
            "## benchmarks/serve_loop.py — run mode: save → serving, requests during "
            f"restarts, restart cost, orphans\n\n{heading_line}\n\n{NOTES}\n"
            + "\n".join(table)
            + "\n"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=EDITS)
    parser.add_argument("--restarts", type=int, default=RESTARTS, help="orphans, under rbd")
    parser.add_argument("--peer-restarts", type=int, default=PEER_RESTARTS)
    parser.add_argument("--standalone", type=int, default=STANDALONE_RUNS)
    parser.add_argument("--as-shipped", type=int, default=AS_SHIPPED_STARTS)
    parser.add_argument("--tools", default=",".join(ALL_TOOLS))
    parser.add_argument("--install-peers", action="store_true")
    parser.add_argument("--quick", action="store_true", help="rbd only, 1 edit: a smoke test")
    parser.add_argument("--write", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    tools = tuple(t.strip() for t in args.tools.split(",") if t.strip())
    unknown = set(tools) - set(ALL_TOOLS)
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}; tools are {', '.join(ALL_TOOLS)}")
    if args.quick:
        options = QUICK
    else:
        options = Options(
            args.edits, args.restarts, args.peer_restarts, args.standalone, tools, args.as_shipped
        )
    if args.install_peers:
        install_peers([t for t in options.tools if t in PEERS])
    try:
        measured = measure(options)
    finally:
        remove_shared_cache()
    lines = [heading(), "", "| measure | value | goal | met |", "|---|---|---|---|"]
    for measure_, value, goal, met in rows(measured):
        verdict = "—" if met is None else ("yes" if met else "MISSED")
        lines.append(f"| {measure_} | {value} | {goal or '—'} | {verdict} |")
    lines.append("")
    print("\n".join(lines))
    if args.write and not args.quick:
        write_results(lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
