"""Run mode against the real daemon and cargo: every successful build (re)starts the
project's server, the old one keeps serving through a failed build, sockets rbd holds
are handed from instance to instance without a refused request, and what happened is
published (events) and recorded (history, show, status, the app's log)."""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rbd.contract import protocol
from tests.conftest import WAIT_S, Events, Rbd, make_crate, processes, wait_gone

APP_STARTED = "app_started"
APP_READY = "app_ready"
APP_EXITED = "app_exited"
APP_OUTPUT = "app_output"
APP_FAILED = "app_failed"

# A std-only HTTP server (a second or so to build). It answers every path with TEXT
# (the tests edit it to make a new version) and /env with what it was started with.
# Without LISTEN_FDS it binds `--port PORT` itself; with it, it serves fds 3.. and
# exits (code 4) unless LISTEN_PID is its own pid.
#
# SIGTERM only sets STOP, checked between requests (poll with a short timeout, never a
# blocking accept): a request being answered is finished, and a connection not yet
# accepted stays queued on rbd's socket for the next instance. So with `listen` no
# request may fail across a restart; one that does is rbd's doing.
#
# APP_IGNORE_TERM=1: SIGTERM is ignored (by the children too: an ignored disposition
# survives exec), so only rbd's SIGKILL ends it. APP_CHILDREN=DIR: it starts sleepers
# in its group, in a group of their own, in a session of their own (setsid), and a
# daemon (orphaned at once), and writes their pids to DIR/<its pid>.<how>.
# APP_START_DELAY_MS=N: it waits N ms before it accepts, then answers what waited on the
# socket and prints how many of those were the test client's requests.
SERVER_RS = r"""
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const TEXT: &str = "@TEXT@";

static STOP: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct PollFd {
    fd: i32,
    events: i16,
    revents: i16,
}

extern "C" {
    fn signal(signum: i32, handler: usize) -> usize;
    fn poll(fds: *mut PollFd, nfds: u64, timeout: i32) -> i32;
}

extern "C" fn on_term(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

fn var(key: &str) -> String {
    std::env::var(key).unwrap_or_default()
}

fn spawn_children(dir: &str, me: u32) {
    let write = |name: &str, pid: u32| {
        let path = format!("{dir}/{me}.{name}");
        std::fs::write(format!("{path}.tmp"), pid.to_string()).unwrap();
        std::fs::rename(format!("{path}.tmp"), path).unwrap();
    };
    let same = Command::new("sleep").arg("613").spawn().unwrap();
    write("same", same.id());
    let group = Command::new("sleep").arg("613").process_group(0).spawn().unwrap();
    write("group", group.id());
    let session = Command::new("setsid").arg("sleep").arg("613").spawn().unwrap();
    write("session", session.id());
    let path = format!("{dir}/{me}.daemon");
    let daemon = "setsid sleep 613 <&- >&- 2>&- &";
    let script = format!("{daemon} echo $! > {path}.tmp && mv {path}.tmp {path}");
    Command::new("sh").arg("-c").arg(script).status().unwrap();
    std::mem::forget((same, group, session));
}

/// Answers one request; whether it came from the test's client.
fn serve(mut stream: TcpStream, info: &str) -> bool {
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            // SIGTERM arriving mid-read: a read with a timeout is never restarted (signal(7)).
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => return false,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&request);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let body = if path == "/env" { info.to_string() } else { TEXT.to_string() };
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        body
    );
    stream.write_all(reply.as_bytes()).ok();
    head.contains("User-Agent: test-client")
}

fn readable(fds: &mut [PollFd], timeout_ms: i32) -> bool {
    for fd in fds.iter_mut() {
        fd.revents = 0;
    }
    unsafe { poll(fds.as_mut_ptr(), fds.len() as u64, timeout_ms) > 0 }
}

/// Answers what is pending now; how many of those were the test client's.
fn answer_pending(fds: &mut [PollFd], listeners: &[TcpListener], info: &str) -> usize {
    let mut clients = 0;
    for (fd, listener) in fds.iter().zip(listeners) {
        if fd.revents != 0 {
            if let Ok((stream, _)) = listener.accept() {
                clients += serve(stream, info) as usize;
            }
        }
    }
    clients
}

fn main() {
    let me = std::process::id();
    let on_term = on_term as extern "C" fn(i32) as usize;
    let handler = if var("APP_IGNORE_TERM") == "1" { 1 } else { on_term };
    unsafe { signal(15, handler) };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let listeners: Vec<TcpListener> = if let Ok(count) = std::env::var("LISTEN_FDS") {
        println!(
            "LISTEN_FDS={} LISTEN_PID={} LISTEN_FDNAMES={} pid={}",
            count, var("LISTEN_PID"), var("LISTEN_FDNAMES"), me
        );
        if var("LISTEN_PID") != me.to_string() {
            eprintln!("fatal: LISTEN_PID is not this process");
            std::process::exit(4);
        }
        let count: i32 = count.parse().unwrap();
        (0..count).map(|i| unsafe { TcpListener::from_raw_fd(3 + i) }).collect()
    } else {
        let at = args.iter().position(|a| a == "--port").expect("--port PORT");
        vec![TcpListener::bind(format!("127.0.0.1:{}", args[at + 1])).unwrap()]
    };
    let info = format!(
        "pid={}\nLISTEN_FDS={}\nLISTEN_PID={}\nLISTEN_FDNAMES={}\nAPP_GREETING={}\nargs={}",
        me, var("LISTEN_FDS"), var("LISTEN_PID"), var("LISTEN_FDNAMES"), var("APP_GREETING"),
        args.join(",")
    );
    if !var("APP_CHILDREN").is_empty() {
        spawn_children(&var("APP_CHILDREN"), me);
    }
    println!("serving {} pid={}", TEXT, me);
    let mut fds: Vec<PollFd> = listeners
        .iter()
        .map(|l| PollFd { fd: l.as_raw_fd(), events: 1, revents: 0 })
        .collect();
    let delay: u64 = var("APP_START_DELAY_MS").parse().unwrap_or(0);
    if delay > 0 {
        // A slow start: requests made meanwhile wait on the socket (if rbd holds it).
        std::thread::sleep(Duration::from_millis(delay));
        let mut queued = 0;
        while readable(&mut fds, 0) {
            queued += answer_pending(&mut fds, &listeners, &info);
        }
        println!("answered {} queued client requests at start pid={}", queued, me);
    }
    while !STOP.load(Ordering::SeqCst) {
        if readable(&mut fds, 20) {
            answer_pending(&mut fds, &listeners, &info);
        }
    }
    println!("stopping {} pid={}", TEXT, me);
}
"""


def server_rs(text: str) -> str:
    return SERVER_RS.replace("@TEXT@", text)


def broken_rs(text: str) -> str:
    """The server with a syntax error: the build fails."""
    return server_rs(text).replace("fn main() {", "fn main( {", 1)


def server_crate(
    root: Path, name: str = "srv", metadata: str = "", rbd_toml: str | None = None
) -> Path:
    manifest = f'[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n'
    if metadata:
        manifest += "\n[package.metadata.rbd]\n" + metadata
    files = {"Cargo.toml": manifest, "src/main.rs": server_rs("v1")}
    if rbd_toml is not None:
        files["rbd.toml"] = rbd_toml
    return make_crate(root, name, files)


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's pick, released at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def has_ipv6_loopback() -> bool:
    try:
        free_port("::1")
    except OSError:
        return False
    return True


def get(port: int, path: str = "/", host: str = "127.0.0.1", timeout: float = WAIT_S) -> str:
    """The body of an HTTP GET; raises on a refused connection or anything but a 200."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect((host, port))
        request = f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test-client\r\n"
        request += "Connection: close\r\n\r\n"
        sock.sendall(request.encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 200 "):
        raise AssertionError(f"not a 200 answer: {data[:200]!r}")
    return body.decode()


def env_of(port: int, host: str = "127.0.0.1") -> dict[str, str]:
    """What the serving instance was started with (its /env page)."""
    lines = get(port, "/env", host).splitlines()
    return dict(line.split("=", 1) for line in lines)


def is_app(name: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == name and all(e.get(k) == v for k, v in fields.items())


def expect(events: Events, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The first event seen so far, or from now on, that matches: events of an app and of
    its builds interleave, and a wait for one must not lose another already received."""
    for event in events.seen:
        if predicate(event):
            return event
    return events.wait_for(predicate)


def finished(events: Events, **fields: Any) -> dict[str, Any]:
    """The next build_finished whose summary has these fields."""
    event = events.wait_for(
        lambda e: (
            e.get("event") == protocol.BUILD_FINISHED
            and all(e["build"].get(k) == v for k, v in fields.items())
        )
    )
    build: dict[str, Any] = event["build"]
    return build


def position(events: Events, event: dict[str, Any]) -> int:
    """Where event is among those seen (the same object, not an equal one)."""
    return next(i for i, other in enumerate(events.seen) if other is event)


def seen(events: Events, name: str, **fields: Any) -> list[dict[str, Any]]:
    return [e for e in events.seen if is_app(name, **fields)(e)]


def status_app(rbd: Rbd, crate: Path) -> dict[str, Any] | None:
    (project,) = rbd.request(protocol.STATUS, path=str(crate))["projects"]
    app: dict[str, Any] | None = project["app"]
    return app


def wait_until(check: Callable[[], Any], what: str, timeout: float = WAIT_S) -> Any:
    """check()'s first truthy value, polled (a wait with a timeout, never an assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"never happened within {timeout} s: {what}"
        time.sleep(0.02)


def no_zombie_under(parent: int) -> bool:
    """No child of parent is left unreaped (within 10 s)."""
    deadline = time.monotonic() + 10
    while any(p.zombie and p.ppid == parent for p in processes()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stop(rbd: Rbd, events: Events, crate: Path, pid: int) -> None:
    """`rbd stop`: the app is gone (reaped, not a zombie of the daemon's), and its exit
    was announced as an expected one."""
    rbd.ok("stop", cwd=crate)
    assert wait_gone(pid, 10)
    assert no_zombie_under(rbd.daemon_pid())
    assert expect(events, is_app(APP_EXITED, pid=pid))["expected"] is True


def started(rbd: Rbd, crate: Path, *args: str) -> Events:
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", *args, cwd=crate)
    return events


class LineReader:
    """A subprocess's stdout lines, collected by a thread (so reads can time out)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.all: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = WAIT_S) -> str:
        """The first line so far, or from now on, that matches."""
        for line in self.all:
            if predicate(line):
                return line
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no matching line within {timeout} s; got: {self.all[-20:]}"
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.all.append(line)
            if predicate(line):
                return line

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def rbd_process(rbd: Rbd, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rbd.client", *args],
        env=rbd.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_every_successful_build_restarts_the_app_and_is_recorded(rbd: Rbd, tmp_path: Path) -> None:
    port = free_port()
    crate = server_crate(
        tmp_path / "srv",
        metadata=f'run_args = ["--port", "{port}"]\n',
        rbd_toml='run_env = { APP_GREETING = "hello from rbd.toml" }\n',
    )
    events = started(rbd, crate, "--run")
    first = finished(events)
    assert first["outcome"] == "success"
    # The restart comes after the build is recorded: the build's own event has no app.
    assert first["app"] is None
    one = expect(events, is_app(APP_STARTED, build_id=first["id"]))
    assert one["project"] == str(crate) and one["bin"] == "srv"
    assert one["argv"][1:] == ["--port", str(port)] and one["argv"][0].endswith("/srv")
    assert one["listen"] == [] and one["handover"] is False
    ready = expect(events, is_app(APP_READY, pid=one["pid"]))
    assert ready["build_id"] == first["id"]
    assert ready["app"]["pid"] == one["pid"] and ready["app"]["ready_by"] == "port"
    assert ready["app"]["replaced_exit"] is None and ready["app"]["error"] is None
    assert get(port) == "v1"
    env = env_of(port)
    assert env["pid"] == str(one["pid"])
    assert env["APP_GREETING"] == "hello from rbd.toml"
    assert env["args"] == f"--port,{port}"
    # Without `listen` nothing is handed over.
    assert env["LISTEN_FDS"] == "" and env["LISTEN_PID"] == ""

    tail = LineReader(rbd_process(rbd, "tail", str(crate)))
    follow = LineReader(rbd_process(rbd, "logs", "--app", "-f", str(crate)))
    try:
        tail.wait_for(lambda line: "following" in line)
        # `logs --app -f` prints the last lines once it is subscribed, then what follows.
        follow.wait_for(lambda line: f"serving v1 pid={one['pid']}" in line)
        (crate / "src" / "main.rs").write_text(server_rs("v2"))
        second = finished(events, trigger=["src/main.rs"])
        assert second["outcome"] == "success" and second["app"] is None
        exited = expect(events, is_app(APP_EXITED, pid=one["pid"]))
        two = expect(events, is_app(APP_STARTED, build_id=second["id"]))
        ready = expect(events, is_app(APP_READY, pid=two["pid"]))
        # The non-JSON tail shows the new instance's output and a line that it is ready.
        tail.wait_for(lambda line: f"serving v2 pid={two['pid']}" in line)
        tail.wait_for(lambda line: "ready" in line)
        follow.wait_for(lambda line: f"serving v2 pid={two['pid']}" in line)
    finally:
        tail.close()
        follow.close()
    assert two["pid"] != one["pid"]
    assert exited["expected"] is True and exited["exit_code"] == 0 and exited["signal"] is None
    assert exited["build_id"] == first["id"]
    assert wait_gone(one["pid"], 5)
    # Built, then the old one stopped, then the new one started and became ready.
    order = [position(events, e) for e in (exited, two, ready)]
    assert order == sorted(order)
    # The old one served until the build was done: it is stopped once cargo succeeded
    # (run mode does not wait for rbd's analysis of the build, so `build_finished` may
    # come a few milliseconds later), never while cargo runs.
    assert position(events, exited) > next(
        i
        for i, e in enumerate(events.seen)
        if e.get("event") == protocol.BUILD_STARTED and e["build_id"] == second["id"]
    )
    # No other instance was started in between.
    assert [e["pid"] for e in seen(events, APP_STARTED)] == [one["pid"], two["pid"]]
    # The new instance re-bound the port the old one released.
    assert get(port) == "v2"
    assert env_of(port)["pid"] == str(two["pid"])

    app = ready["app"]
    assert app["pid"] == two["pid"] and app["bin"] == "srv" and app["error"] is None
    assert app["replaced_exit"] == 0
    assert app["stop_s"] >= 0 and app["ready_s"] >= 0
    # From the save to serving covers the build, the stop and the start.
    assert app["serving_s"] >= app["ready_s"]
    assert app["serving_s"] >= app["stop_s"]
    assert app["serving_s"] >= second["wall_s"]

    history = json.loads(rbd.ok("history", "--json", cwd=crate))
    assert [b["id"] for b in history] == [second["id"], first["id"]]
    assert history[0]["app"] == app
    assert history[1]["app"]["pid"] == one["pid"]
    assert history[1]["app"]["replaced_exit"] is None
    shown = json.loads(rbd.ok("show", str(second["id"]), "--json"))
    assert shown["app"] == app

    state = status_app(rbd, crate)
    assert state is not None
    assert state["state"] == "ready" and state["pid"] == two["pid"] and state["bin"] == "srv"
    assert state["build_id"] == second["id"] and state["exit_code"] is None
    assert state["listen"] == [] and state["error"] is None
    assert "srv" in rbd.ok("status", cwd=crate)

    # The app's output, both instances' in order; the old one said goodbye (it got
    # SIGTERM and was let finish) before the new one started. (Ready by its socket, the
    # new one may be ready before its first line is read: that line is awaited.)
    expect(
        events,
        lambda e: (
            e.get("event") == APP_OUTPUT
            and e["pid"] == two["pid"]
            and f"serving v2 pid={two['pid']}" in e["lines"]
        ),
    )
    logs = rbd.ok("logs", "--app", str(crate))
    lines = [f"serving v1 pid={one['pid']}", f"stopping v1 pid={one['pid']}"]
    lines.append(f"serving v2 pid={two['pid']}")
    assert all(line in logs for line in lines), logs
    assert [logs.index(line) for line in lines] == sorted(logs.index(line) for line in lines)

    stop(rbd, events, crate, two["pid"])


def test_a_failed_build_leaves_the_old_app_serving(rbd: Rbd, tmp_path: Path) -> None:
    port = free_port()
    crate = server_crate(tmp_path / "srv", metadata=f'run_args = ["--port", "{port}"]\n')
    events = started(rbd, crate, "--run")
    first = finished(events, outcome="success")
    one = expect(events, is_app(APP_READY, build_id=first["id"]))
    main = crate / "src" / "main.rs"

    main.write_text(broken_rs("v2"))
    failed = finished(events, trigger=["src/main.rs"])
    assert failed["outcome"] == "failure" and failed["app"] is None
    # The old instance is untouched: same pid, same text, nothing stopped or started.
    assert get(port) == "v1"
    state = status_app(rbd, crate)
    assert state is not None and state["pid"] == one["pid"] and state["state"] == "ready"
    assert state["build_id"] == first["id"]
    history = json.loads(rbd.ok("history", "--json", cwd=crate))
    assert history[0]["id"] == failed["id"] and history[0]["app"] is None

    main.write_text(server_rs("v3"))
    fixed = finished(events, trigger=["src/main.rs"])
    assert fixed["outcome"] == "success"
    exited = expect(events, is_app(APP_EXITED, pid=one["pid"]))
    assert exited["expected"] is True
    ready = expect(events, is_app(APP_READY, build_id=fixed["id"]))
    assert get(port) == "v3"
    assert ready["app"]["replaced_exit"] == 0
    # The failed build started and stopped nothing.
    assert [e["build_id"] for e in seen(events, APP_STARTED)] == [first["id"], fixed["id"]]
    assert len(seen(events, APP_EXITED)) == 1


def app_lines(events: Events, pid: int) -> list[str]:
    """Instance pid's output lines, once it has printed the line that ends its start."""
    expect(
        events,
        lambda e: (
            e.get("event") == APP_OUTPUT
            and e["pid"] == pid
            and any(line.startswith("answered ") for line in e["lines"])
        ),
    )
    return [line for e in seen(events, APP_OUTPUT, pid=pid) for line in e["lines"]]


class Client(threading.Thread):
    """Requests one after another until stopped; every failure is kept."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.texts: list[str] = []
        self.failures: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.texts.append(get(self.port, timeout=30))
            except Exception as exc:  # refused, reset, a bad answer: all count
                self.failures.append(repr(exc))
            # A connection per request: pacing keeps TIME_WAIT sockets from using up the
            # client's ephemeral ports, and still puts many requests around each restart.
            time.sleep(0.003)

    def seen_text(self, text: str) -> bool:
        return text in self.texts[-5:]

    def wait_for(self, text: str) -> None:
        wait_until(lambda: self.seen_text(text), f"the client got {text!r}")

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=WAIT_S)


def test_listen_hands_the_sockets_over_without_a_failed_request(rbd: Rbd, tmp_path: Path) -> None:
    port = free_port()
    second_host = "::1" if has_ipv6_loopback() else "127.0.0.1"
    port2 = free_port(second_host)
    first_address = f"127.0.0.1:{port}"
    second_address = f"[{second_host}]:{port2}" if second_host == "::1" else f"127.0.0.1:{port2}"
    # Each instance starts slowly: requests made while it does must wait, not fail.
    crate = server_crate(tmp_path / "srv", rbd_toml='run_env = { APP_START_DELAY_MS = "250" }\n')
    events = started(rbd, crate, "--run", "--listen", first_address, "--listen", second_address)
    first = finished(events, outcome="success")
    one = expect(events, is_app(APP_STARTED, build_id=first["id"]))
    assert one["listen"] == [first_address, second_address] and one["handover"] is True
    ready = expect(events, is_app(APP_READY, pid=one["pid"]))
    assert ready["app"]["ready_by"] == "url" and ready["app"]["handover"] is True

    # What the app saw: its own pid, two fds, one name per fd.
    env = env_of(port)
    assert env["pid"] == str(one["pid"]) == env["LISTEN_PID"]
    assert env["LISTEN_FDS"] == "2"
    names = env["LISTEN_FDNAMES"].split(":")
    assert len(names) == 2, env["LISTEN_FDNAMES"]
    # The names stand for the addresses, in order (the convention reserves `:`).
    for name, address in zip(names, (first_address, second_address), strict=True):
        assert name.replace("_", ":") == address, (name, address)
    # fd 4 is the second address.
    assert get(port2, host=second_host) == "v1"
    state = status_app(rbd, crate)
    assert state is not None and state["listen"] == [first_address, second_address]

    client = Client(port)
    client.start()
    try:
        client.wait_for("v1")
        pids = [one["pid"]]
        for version in ("v2", "v3", "v4"):
            (crate / "src" / "main.rs").write_text(server_rs(version))
            build = finished(events, trigger=["src/main.rs"])
            assert build["outcome"] == "success"
            started_event = expect(events, is_app(APP_STARTED, build_id=build["id"]))
            ready = expect(events, is_app(APP_READY, pid=started_event["pid"]))
            assert ready["app"]["replaced_exit"] == 0 and ready["app"]["handover"] is True
            assert ready["app"]["serving_s"] >= ready["app"]["ready_s"]
            assert env_of(port)["LISTEN_PID"] == str(started_event["pid"])
            pids.append(started_event["pid"])
            client.wait_for(version)
    finally:
        client.stop()
    assert client.failures == [], client.failures[:5]
    # Never an old answer after a new one: the old instance was gone before the new began.
    versions = [int(text.lstrip("v")) for text in client.texts]
    assert versions == sorted(versions)
    assert set(versions) == {1, 2, 3, 4}
    assert len(set(pids)) == 4
    # Every restart was crossed by requests: some waited on the socket while no
    # instance accepted, and the new one answered them.
    for pid in pids[1:]:
        (line,) = [x for x in app_lines(events, pid) if x.startswith("answered ")]
        assert int(line.split()[1]) >= 1, line
    exits = seen(events, APP_EXITED)
    assert [e["pid"] for e in exits] == pids[:3]
    assert all(e["expected"] and e["exit_code"] == 0 for e in exits)

    # rbd holds the sockets while it watches: stopped, the ports are free again.
    stop(rbd, events, crate, pids[-1])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
