"""Fixtures: tiny Rust crates in temporary dirs, and the real daemon run against them
with its XDG dirs pointed at temporary dirs."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rbd.client.connection import Connection
from rbd.contract import protocol

# How long a test waits for something the daemon is expected to do. Generous:
# CI machines have 2 cores and cargo shares them with the test.
WAIT_S = 60.0

SLOW_MAIN = textwrap.dedent(
    """\
    #![allow(long_running_const_eval)]
    // Const evaluation spins rustc for minutes: a build that is still running
    // when the test changes something.
    const SPIN: u64 = {
        let mut i: u64 = 0;
        let mut acc: u64 = 0;
        while i < 4_000_000_000 { acc = acc.wrapping_mul(31).wrapping_add(i); i += 1; }
        acc
    };
    fn main() { println!("{}", SPIN); }
    """
)


# One cache dir for the whole session: the daemon compiles its rustc wrapper
# into it once (about 0.5 s), not once per test's daemon.
SHARED_CACHE = Path(tempfile.mkdtemp(prefix="rbd-cache-"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(SHARED_CACHE, ignore_errors=True)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_crate(root: Path, name: str = "demo", files: dict[str, str] | None = None) -> Path:
    """A dependency-free binary crate; `files` adds or replaces files (relative paths)."""
    root.mkdir(parents=True, exist_ok=True)
    contents = {
        "Cargo.toml": f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n',
        "src/main.rs": 'fn main() {\n    println!("hello");\n}\n',
        ".gitignore": "/target\n",
    }
    contents.update(files or {})
    for relative, text in contents.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def crate(tmp_path: Path) -> Path:
    return make_crate(tmp_path / "demo")


class Events:
    """A live `subscribe` connection; events are collected by a thread."""

    def __init__(self, socket_path: str, path: str | None = None) -> None:
        self.connection = Connection.open(socket_path)
        args: dict[str, Any] = {"path": path} if path else {}
        self.connection.request(protocol.SUBSCRIBE, **args)
        self.queue: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for event in self.connection.events():
                if event is not None:
                    self.queue.put(event)
        except Exception:
            self.queue.put({"event": "_closed"})

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = WAIT_S
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = [e.get("event") for e in self.seen[-20:]]
                raise AssertionError(f"no matching event within {timeout} s; last seen: {names}")
            try:
                event = self.queue.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(event)
            if event.get("event") == "_closed":
                raise AssertionError("the daemon closed the event stream")
            if predicate(event):
                return event

    def finished(self, timeout: float = WAIT_S) -> dict[str, Any]:
        """The next build_finished event's build summary."""
        event = self.wait_for(lambda e: e.get("event") == protocol.BUILD_FINISHED, timeout)
        build: dict[str, Any] = event["build"]
        return build

    def started(self, timeout: float = WAIT_S) -> dict[str, Any]:
        return self.wait_for(lambda e: e.get("event") == protocol.BUILD_STARTED, timeout)

    def close(self) -> None:
        # Wake the pump thread first: closing a file object another thread is
        # reading from would wait for that read forever.
        with contextlib.suppress(OSError):
            self.connection.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self.connection.close()


class Rbd:
    """Runs the real `rbd` client (a subprocess) against a daemon with private XDG dirs."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(base / "run"),
            "XDG_STATE_HOME": str(base / "state"),
            "XDG_CONFIG_HOME": str(base / "config"),
            "XDG_CACHE_HOME": str(SHARED_CACHE),
        }
        for key in [k for k in self.env if k.startswith("RBD_")]:
            del self.env[key]
        self.socket = str(base / "run" / "rbd" / "rbd.sock")
        self.lock = str(base / "run" / "rbd" / "rbd.lock")
        self.store = str(base / "state" / "rbd" / "rbd.sqlite3")
        self._events: list[Events] = []

    def run(
        self,
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        timeout: float = WAIT_S,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rbd.client", *args],
            cwd=cwd,
            env=env or self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, cwd: Path | None = None) -> str:
        done = self.run(*args, cwd=cwd)
        assert done.returncode == 0, f"rbd {' '.join(args)}: {done.returncode}\n{done.stderr}"
        return done.stdout

    def events(self, path: Path | None = None) -> Events:
        events = Events(self.socket, str(path) if path else None)
        self._events.append(events)
        return events

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        with Connection.open(self.socket) as connection:
            return connection.request(op, **args)

    def daemon_pid(self) -> int:
        return int(self.request(protocol.STATUS)["daemon"]["pid"])

    def start_daemon(self) -> subprocess.Popen[bytes]:
        """Start the daemon without watching anything (so tests can subscribe first)."""
        process = subprocess.Popen(
            [sys.executable, "-m", "rbd.daemon"],
            env=self.env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            # Kept for a test that fails: what the daemon said before dying.
            stderr=(self.base / "daemon.err").open("ab"),
        )
        # Reap it when it exits, as init would for a daemon `rbd start` spawned.
        threading.Thread(target=process.wait, daemon=True).start()
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                Connection.open(self.socket).close()
                return process
            except Exception:
                assert process.poll() is None, "the daemon exited"
                time.sleep(0.02)
        raise AssertionError("the daemon did not come up")

    def close(self) -> None:
        errors = self.base / "daemon.err"
        if errors.exists() and errors.stat().st_size:
            print("daemon stderr:\n" + errors.read_text(errors="replace")[-5000:])
        for events in self._events:
            events.close()
        if os.path.exists(self.socket):
            try:
                pid = self.daemon_pid()
            except Exception:
                pid = None
            self.run("shutdown")
            if pid is not None:
                _wait_gone(pid, 10)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until pid has exited (a zombie waiting for its parent to reap it counts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return True
        except OSError:
            return True
        time.sleep(0.02)
    return False


wait_gone = _wait_gone


@pytest.fixture
def rbd() -> Iterator[Rbd]:
    # Short paths: a Unix socket path must fit in 108 bytes.
    base = Path(tempfile.mkdtemp(prefix="rbd-", dir="/tmp"))
    helper = Rbd(base)
    try:
        yield helper
    finally:
        helper.close()
        shutil.rmtree(base, ignore_errors=True)


def processes_in_group(pgid: int) -> list[int]:
    from rbd.daemon.build.procs import group_members

    return [pid for pid, _ in group_members(pgid)]


@dataclass(frozen=True)
class Process:
    """One process as /proc shows it (tests look for a build's processes this way)."""

    pid: int
    ppid: int
    zombie: bool
    argv: list[bytes]


def processes() -> list[Process]:
    """Every process /proc shows (its argv empty where it cannot be read)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, IndexError):
            continue
        found.append(Process(int(name), int(fields[1]), fields[0] == b"Z", argv))
    return found


def rustc_processes_under(path: Path) -> list[int]:
    """Live rustc processes compiling something below path."""
    below = str(path).encode()
    return [
        p.pid
        for p in processes()
        if not p.zombie and p.argv[0].endswith(b"rustc") and below in b" ".join(p.argv)
    ]
