"""The wire protocol as a script or editor plugin would speak it, over a raw socket; and
the server's answer to a bug in a handler or a failing store."""

from __future__ import annotations

import contextlib
import json
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from structlog.testing import capture_logs

from rbd.contract import protocol
from rbd.daemon.bench.job import Benches
from rbd.daemon.build.shim import Shims
from rbd.daemon.projects.registry import Registry
from rbd.daemon.rpc.events import EventHub
from rbd.daemon.rpc.server import Server
from rbd.daemon.services import DaemonInfo, Services
from rbd.daemon.store.asyncstore import AsyncStore
from rbd.daemon.store.sqlite import Store
from rbd.daemon.tunables import Tunables
from tests.conftest import Rbd


class Raw:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(json.dumps(message).encode() + b"\n")
        return self.read()

    def read(self) -> dict[str, Any]:
        line = self.reader.readline()
        assert line, "connection closed"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def closed(self) -> bool:
        try:
            return self.reader.readline() == b""
        except ConnectionResetError:
            # Closed with our unread request bytes still in its buffer: the
            # kernel resets rather than ends the stream. Closed all the same.
            return True

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def raw(rbd: Rbd) -> Any:
    rbd.start_daemon()
    connections: list[Raw] = []

    def connect() -> Raw:
        connection = Raw(rbd.socket)
        connections.append(connection)
        return connection

    yield connect
    for connection in connections:
        connection.close()


def test_hello_then_requests_with_ids(raw: Any) -> None:
    c = raw()
    hello = c.ask({"op": "hello", "protocol": protocol.PROTOCOL_VERSION, "id": "h"})
    assert hello["ok"] is True and hello["id"] == "h"
    assert hello["protocol"] == protocol.PROTOCOL_VERSION and hello["pid"] > 0
    status = c.ask({"op": "status", "id": 7})
    assert status["ok"] is True and status["id"] == 7
    assert set(status["daemon"]) >= {
        "pid",
        "version",
        "protocol",
        "uptime_s",
        "socket",
        "log",
        "store",
    }
    history = c.ask({"op": "history", "id": [1, 2], "all": True})
    assert history == {
        "id": [1, 2],
        "ok": True,
        "project": None,
        "builds": [],
        "trend": None,
        "trends": {},
    }


def test_requests_before_hello_are_refused(raw: Any) -> None:
    c = raw()
    reply = c.ask({"op": "status", "id": 1})
    assert reply["ok"] is False and reply["error"]["code"] == protocol.HELLO_REQUIRED


def test_protocol_mismatch_says_how_to_recover(raw: Any) -> None:
    c = raw()
    reply = c.ask({"op": "hello", "protocol": 999, "id": 1})
    assert reply["error"]["code"] == protocol.PROTOCOL_MISMATCH
    assert "rbd shutdown && rbd start" in reply["error"]["message"]
    assert c.closed()


def test_malformed_requests_get_error_replies_and_the_daemon_stays(raw: Any, rbd: Rbd) -> None:
    c = raw()
    c.ask({"op": "hello", "protocol": protocol.PROTOCOL_VERSION})
    cases: list[tuple[bytes, str]] = [
        (b"not json\n", protocol.BAD_REQUEST),
        (b"\xff\xfe\x00garbage\n", protocol.BAD_REQUEST),
        (b"[1, 2, 3]\n", protocol.BAD_REQUEST),
        (b'{"id": 1}\n', protocol.BAD_REQUEST),
        (b'{"op": "frobnicate", "id": 2}\n', protocol.UNKNOWN_OP),
        (b'{"op": "history", "id": 3, "limit": "many"}\n', protocol.BAD_REQUEST),
        (b'{"op": "history", "id": 4, "limit": 0}\n', protocol.BAD_REQUEST),
        (b'{"op": "show", "id": 5}\n', protocol.BAD_REQUEST),
        (b'{"op": "show", "id": 6, "build_id": 12345}\n', protocol.NOT_FOUND),
        (b'{"op": "start", "id": 7}\n', protocol.BAD_REQUEST),
        (b'{"op": "start", "id": 8, "path": "/nonexistent/dir"}\n', protocol.NO_PROJECT),
        (b'{"op": "start", "id": 9, "path": "/tmp", "env": {"A": 1}}\n', protocol.BAD_REQUEST),
        (b'{"op": "stop", "id": 10, "path": "/"}\n', protocol.NOT_WATCHED),
        (b'{"op": "subscribe", "id": 11, "path": "/"}\n', protocol.NOT_WATCHED),
    ]
    for line, code in cases:
        c.send(line)
        reply = c.read()
        assert reply["ok"] is False, line
        assert reply["error"]["code"] == code, (line, reply)
        assert reply["error"]["message"]
    assert c.ask({"op": "status", "id": 99})["ok"] is True
    assert rbd.run("status").returncode == 0


def test_oversized_request_is_refused_and_closed(raw: Any, rbd: Rbd) -> None:
    c = raw()
    c.ask({"op": "hello", "protocol": protocol.PROTOCOL_VERSION})
    c.send(b'{"op": "status", "pad": "' + b"x" * (protocol.MAX_REQUEST_BYTES + 10))
    reply = c.read()
    assert reply["error"]["code"] == protocol.TOO_LARGE
    assert c.closed()
    assert rbd.run("status").returncode == 0


def test_abrupt_disconnects_do_not_hurt(raw: Any, rbd: Rbd) -> None:
    for _ in range(20):
        c = raw()
        c.send(b'{"op": "hello", "protocol": 1}\n{"op": "status"')
        c.close()
    assert rbd.run("status").returncode == 0


# --- a handler's bug, and a failing store, against the server in this process -------------


@contextlib.asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[Services, Callable[..., Any]]]:
    """The daemon's server with real services, on a socket in tmp_path; and a function
    sending one request (after hello) and returning its reply."""
    socket_path = str(tmp_path / "rbd.sock")
    store = AsyncStore(Store(tmp_path / "rbd.sqlite3"))
    hub = EventHub(16)
    shims = Shims(tmp_path / "cache")
    async with anyio.create_task_group() as tg:
        registry = Registry(store, hub, tg, shims, tmp_path / "apps")
        benches = Benches(registry, store, hub, shims)
        await tg.start(benches.run)
        services = Services(
            info=DaemonInfo(socket=socket_path),
            store=store,
            registry=registry,
            hub=hub,
            benches=benches,
            request_shutdown=tg.cancel_scope.cancel,
        )
        listener = await anyio.create_unix_listener(socket_path)
        tg.start_soon(listener.serve, Server(services, Tunables()).handle)

        def exchange(message: dict[str, Any]) -> dict[str, Any]:
            # A blocking client in a worker thread, as a script would be.
            connection = Raw(socket_path)
            try:
                assert connection.ask({"op": "hello", "protocol": 1})["ok"] is True
                return connection.ask(message)
            finally:
                connection.close()

        async def ask(message: dict[str, Any]) -> dict[str, Any]:
            return await anyio.to_thread.run_sync(exchange, message)

        try:
            yield services, ask
        finally:
            tg.cancel_scope.cancel()
    store.sync.close()


@pytest.mark.anyio
async def test_a_handlers_own_bug_is_internal_and_logged_with_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(tmp_path) as (services, ask):

        def find(path: str | None) -> None:
            raise ValueError("a bug in the daemon")

        monkeypatch.setattr(services.registry, "find", find)
        with capture_logs() as logs:
            reply = await ask({"op": "status", "id": 1, "path": "/somewhere"})
            # The client's own mistake is no bug: answered, not logged.
            mistake = await ask({"op": "history", "id": 2, "limit": "many"})
        assert reply["ok"] is False and reply["id"] == 1
        assert reply["error"] == {"code": "internal", "message": "ValueError: a bug in the daemon"}
        assert mistake["error"]["code"] == protocol.BAD_REQUEST
        failures = [entry for entry in logs if entry["event"] == "request_failed"]
        assert len(failures) == 1, logs
        # exc_info: the log file's renderer writes the traceback.
        assert failures[0]["op"] == "status" and failures[0]["exc_info"] is True
        assert failures[0]["log_level"] == "error"
        # And the daemon serves on.
        assert (await ask({"op": "status", "id": 3}))["ok"] is True


@pytest.mark.anyio
async def test_a_failing_store_gets_its_own_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(tmp_path) as (services, ask):

        def history(project: str | None, limit: int) -> list[dict[str, Any]]:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(services.store.sync, "history", history)
        with capture_logs() as logs:
            reply = await ask({"op": "history", "id": 1, "all": True})
        assert reply["ok"] is False
        assert reply["error"]["code"] == protocol.STORE_ERROR == "store_error"
        assert "disk I/O error" in reply["error"]["message"]
        assert not [entry for entry in logs if entry["event"] == "request_failed"]
        status = await ask({"op": "status"})
        assert "disk I/O error" in status["daemon"]["store_error"]
