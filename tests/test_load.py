"""Load: many `rbd tail` clients and a flood of `status` requests while builds run, and a
tail that stops reading, against the real daemon and cargo over its real socket."""

from __future__ import annotations

import json
import math
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rbd.client.connection import Connection
from rbd.contract import protocol
from rbd.daemon.errors import ConfigError
from rbd.daemon.rpc.connection import SEND_TIMEOUT_S
from rbd.daemon.tunables import SUBSCRIBER_BUFFER, SUBSCRIBER_BUFFER_ENV, subscriber_buffer
from tests.conftest import WAIT_S, Events, Rbd, make_crate
from tests.test_projects import main_rs

# `check` and a short settle: the tests are about the daemon's fan-out, not about rustc.
MANIFEST = (
    '[package]\nname = "{name}"\nversion = "0.1.0"\nedition = "2021"\n\n'
    '[package.metadata.rbd]\ncommand = "check"\nsettle_ms = 5\n'
)

TAILS = 50
EDITS = 10
# ~200 status requests a second in all, each thread on its own connection.
STATUS_THREADS = 4
STATUS_RATE = 200.0


def crate_at(path: Path) -> Path:
    return make_crate(path, path.name, {"Cargo.toml": MANIFEST.format(name=path.name)})


def save(path: Path, text: str) -> None:
    """Write as editors do (a temporary file renamed over): one change, never a
    half-written file that could start a build of its own."""
    temp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    temp.write_text(text)
    os.replace(temp, path)


def failing_rs(message: str) -> str:
    return f'fn main() {{}}\ncompile_error!("{message}");\n'


def subscribe_raw(socket_path: str) -> tuple[socket.socket, bytearray]:
    """A blocking socket that said hello and subscribed to every project; and the bytes
    read past the two replies (the start of the event stream)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    sock.connect(socket_path)
    hello = {"op": protocol.HELLO, "id": 1, "protocol": protocol.PROTOCOL_VERSION}
    sock.sendall(protocol.encode(hello) + protocol.encode({"op": protocol.SUBSCRIBE, "id": 2}))
    buffer = bytearray()
    for expected in (1, 2):
        while b"\n" not in buffer:
            chunk = sock.recv(1 << 16)
            assert chunk, "the daemon closed the connection before subscribing it"
            buffer += chunk
        end = buffer.index(b"\n")
        reply = protocol.decode(bytes(buffer[:end]))
        del buffer[: end + 1]
        assert reply.get("ok") is True and reply.get("id") == expected, reply
    return sock, buffer


def finished_ids(buffer: bytearray) -> list[int]:
    """The build ids of the complete build_finished lines in buffer (which it consumes)."""
    ids = []
    while (end := buffer.find(b"\n")) >= 0:
        message = protocol.decode(bytes(buffer[:end]))
        del buffer[: end + 1]
        if message.get("event") == protocol.BUILD_FINISHED:
            ids.append(int(message["build"]["id"]))
    return ids


@dataclass(eq=False)
class Tail:
    sock: socket.socket
    buffer: bytearray
    finished: list[int] = field(default_factory=list)
    closed: bool = False


class Tails:
    """Subscribed sockets, all read by one selector thread, recording each one's
    build_finished ids. One thread: 50 readers would take turns on the GIL and
    compete with the daemon and cargo for the machine's two cores."""

    def __init__(self, socket_path: str, count: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.changed = threading.Condition()
        self.tails: list[Tail] = []
        for _ in range(count):
            sock, buffer = subscribe_raw(socket_path)
            tail = Tail(sock, buffer, finished_ids(buffer))
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, tail)
            self.tails.append(tail)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(timeout=0.1):
                tail: Tail = key.data
                try:
                    chunk = tail.sock.recv(1 << 16)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk = b""
                with self.changed:
                    if chunk:
                        tail.buffer += chunk
                        tail.finished += finished_ids(tail.buffer)
                    else:
                        tail.closed = True
                        self.selector.unregister(tail.sock)
                    self.changed.notify_all()

    def wait_until(self, predicate: Callable[[list[Tail]], bool], timeout: float = WAIT_S) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: predicate(self.tails), timeout)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for tail in self.tails:
            tail.sock.close()
        self.selector.close()


class StatusLoad:
    """Threads sending `status` requests at a fixed pace, each on its own connection;
    counts the replies and keeps the slowest one and any error."""

    def __init__(self, socket_path: str, rate: float, threads: int) -> None:
        self.socket_path = socket_path
        self.interval = threads / rate
        self.replies = 0
        self.slowest = 0.0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self._stop = threading.Event()
        self.started = time.monotonic()
        self.elapsed = 0.0
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _run(self) -> None:
        try:
            with Connection.open(self.socket_path) as connection:
                next_at = time.monotonic()
                while not self._stop.is_set():
                    asked = time.monotonic()
                    reply = connection.request(protocol.STATUS)
                    took = time.monotonic() - asked
                    assert reply["daemon"]["pid"] > 0, reply
                    with self.lock:
                        self.replies += 1
                        self.slowest = max(self.slowest, took)
                    # Paced, not synchronised: a late reply does not cause a burst after it.
                    next_at = max(next_at + self.interval, time.monotonic())
                    self._stop.wait(next_at - time.monotonic())
        except Exception as exc:
            with self.lock:
                self.errors.append(repr(exc))

    def stop(self) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self.elapsed = time.monotonic() - self.started
        for thread in self._threads:
            thread.join(timeout=WAIT_S)

    def report(self) -> str:
        rate = self.replies / self.elapsed if self.elapsed else 0.0
        return (
            f"status: {self.replies} replies in {self.elapsed:.1f} s ({rate:.0f}/s), "
            f"slowest {self.slowest * 1000:.0f} ms"
        )


def next_build(driver: Events, rbd: Rbd, crate: Path) -> dict[str, Any]:
    """The next build's summary; failing, says what the daemon thinks of the project (a
    watcher that fell back to polling misses saves made within the same second)."""
    try:
        return driver.finished()
    except AssertionError as exc:
        projects = rbd.request(protocol.STATUS, path=str(crate))["projects"]
        problem = projects[0]["problem"] if projects else "not watched"
        raise AssertionError(f"{exc}; project problem: {problem}") from None


def history_ids(rbd: Rbd, crate: Path) -> list[int]:
    builds = json.loads(rbd.ok("history", "--json", "--limit", "10000", cwd=crate))
    return sorted(int(build["id"]) for build in builds)


def test_fifty_tails_get_every_build_under_a_status_flood(rbd: Rbd, tmp_path: Path) -> None:
    crate = crate_at(tmp_path / "load")
    rbd.start_daemon()
    tails = Tails(rbd.socket, TAILS)
    driver = rbd.events()
    load = StatusLoad(rbd.socket, STATUS_RATE, STATUS_THREADS)
    try:
        rbd.ok("start", cwd=crate)
        built = [next_build(driver, rbd, crate)]
        for i in range(EDITS):
            save(crate / "src" / "main.rs", main_rs(f"edit {i}"))
            built.append(next_build(driver, rbd, crate))
        load.stop()
        print(load.report())
        ids = [build["id"] for build in built]
        assert [build["outcome"] for build in built] == ["success"] * (EDITS + 1)
        assert len(set(ids)) == EDITS + 1
        assert history_ids(rbd, crate) == sorted(ids), "a build is missing from the history"

        tails.wait_until(lambda ts: all(len(t.finished) >= len(ids) or t.closed for t in ts))
        for n, tail in enumerate(tails.tails):
            assert not tail.closed, f"tail {n} was disconnected"
            assert tail.finished == ids, f"tail {n} got {tail.finished}, not {ids}"

        assert load.errors == []
        assert load.replies > 0
        assert rbd.request(protocol.STATUS)["daemon"]["subscribers"] == TAILS + 1
    finally:
        load.stop()
        tails.close()


# The stuck tail's test: a daemon whose subscribers buffer STUCK_BUFFER events, four
# tails that read, and one that stops reading right after subscribing.
STUCK_BUFFER = 16
GOOD_TAILS = 4
# Every build publishes at least build_started and build_finished.
MIN_EVENTS_PER_BUILD = 2


def daemon_log_has(rbd: Rbd, event: str) -> bool:
    log = Path(rbd.request(protocol.STATUS)["daemon"]["log"])
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if json.loads(line).get("event") == event:
                return True
        time.sleep(0.05)
    return False


def read_until_closed(sock: socket.socket, buffer: bytearray, timeout: float) -> bool:
    """Read everything the daemon sent into buffer; whether it then closed the connection."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if not chunk:
            return True
        buffer += chunk
    return False


def test_a_tail_that_stops_reading_is_dropped_and_slows_nobody(rbd: Rbd, tmp_path: Path) -> None:
    crate = crate_at(tmp_path / "stuck")
    plain = rbd.env
    rbd.env = {**plain, SUBSCRIBER_BUFFER_ENV: str(STUCK_BUFFER)}
    try:
        rbd.start_daemon()
    finally:
        # Only the daemon's: `rbd start` passes its environment on to the project's builds.
        rbd.env = plain
    tails = Tails(rbd.socket, GOOD_TAILS)
    driver = rbd.events()
    stuck, unread = subscribe_raw(rbd.socket)
    load = StatusLoad(rbd.socket, STATUS_RATE / 2, STATUS_THREADS // 2)
    try:
        assert rbd.request(protocol.STATUS)["daemon"]["subscribers"] == GOOD_TAILS + 2
        rbd.ok("start", cwd=crate)
        built = [next_build(driver, rbd, crate)]

        # Why the stuck tail must be dropped, whatever the kernel: between the daemon and
        # a client that does not read lie (1) the daemon's socket send buffer, SO_SNDBUF
        # bytes (the kernel's default for a Unix socket, the daemon sets none), counted in
        # skbs at least as large as the bytes they carry, so it never holds more than
        # 1.5 * SO_SNDBUF of event data (it stops taking data once full; a last write can
        # add at most half of it); (2) the one event the connection's forwarding task is
        # writing; (3) the hub's buffer of STUCK_BUFFER events. An event of 2 * SO_SNDBUF
        # cannot fit in (1), so its write stays blocked; then every later event waits in
        # (3), and the (STUCK_BUFFER + 1)th overflows it: the hub drops the subscriber.
        # At MIN_EVENTS_PER_BUILD events a build, that takes at most `enough` builds after
        # the big one, each a quick failing `cargo check`, so well within the 10 s send
        # timeout after which the blocked write would end the connection anyway (that is
        # the other way out, which the log line below tells apart).
        with socket.socket(socket.AF_UNIX) as probe:
            sndbuf = probe.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        big = "x" * (2 * sndbuf)
        save(crate / "src" / "main.rs", failing_rs(big))
        built.append(next_build(driver, rbd, crate))
        assert len(driver.seen[-1]["first_error"]) > len(big), "the big event was not big"

        enough = math.ceil((STUCK_BUFFER + 1) / MIN_EVENTS_PER_BUILD)
        subscribers = GOOD_TAILS + 2
        for i in range(enough):
            save(crate / "src" / "main.rs", failing_rs(f"small {i}"))
            built.append(next_build(driver, rbd, crate))
            # build_finished was published to every subscriber before the driver got it.
            subscribers = rbd.request(protocol.STATUS)["daemon"]["subscribers"]
            if subscribers == GOOD_TAILS + 1:
                break
        assert subscribers == GOOD_TAILS + 1, f"not dropped after {enough} builds"
        print(f"stuck tail dropped at the {len(built) - 2}th build after the big event")
        assert daemon_log_has(rbd, "subscriber_dropped"), "dropped, but not for its buffer"

        # The others go on as before.
        save(crate / "src" / "main.rs", main_rs("fixed"))
        built.append(next_build(driver, rbd, crate))
        load.stop()
        print(load.report())
        assert [build["outcome"] for build in built[1:-1]] == ["failure"] * (len(built) - 2)
        assert built[-1]["outcome"] == "success"
        ids = [build["id"] for build in built]
        assert history_ids(rbd, crate) == sorted(ids)
        tails.wait_until(lambda ts: all(len(t.finished) >= len(ids) or t.closed for t in ts))
        for n, tail in enumerate(tails.tails):
            assert not tail.closed and tail.finished == ids, f"tail {n}: {tail.finished}"
        assert load.errors == []
        # A daemon that waited for the stuck tail would have stalled for the send timeout.
        assert load.slowest < SEND_TIMEOUT_S / 2, load.report()

        # Once read, what the daemon had queued for the stuck tail ends with the
        # connection closed; the builds after the drop never reach it.
        assert read_until_closed(stuck, unread, WAIT_S), "the stuck tail's connection stayed open"
        got = finished_ids(unread)
        assert got == ids[: len(got)] and len(got) < len(ids), got
    finally:
        load.stop()
        tails.close()
        stuck.close()


def test_subscriber_buffer_setting_is_validated() -> None:
    assert subscriber_buffer({}) == SUBSCRIBER_BUFFER == 2048
    assert subscriber_buffer({SUBSCRIBER_BUFFER_ENV: " 16 "}) == 16
    for bad in ("0", "-1", "many", "1.5", str(1 << 30)):
        with pytest.raises(ConfigError, match=SUBSCRIBER_BUFFER_ENV):
            subscriber_buffer({SUBSCRIBER_BUFFER_ENV: bad})


def test_a_bad_subscriber_buffer_keeps_the_daemon_from_starting(rbd: Rbd, tmp_path: Path) -> None:
    crate = crate_at(tmp_path / "bad")
    done = rbd.run("start", cwd=crate, env={**rbd.env, SUBSCRIBER_BUFFER_ENV: "0"})
    assert done.returncode != 0
    assert SUBSCRIBER_BUFFER_ENV in done.stderr, done.stderr
    assert not os.path.exists(rbd.socket)
