"""Run mode seen from a browser: a page of benchmarks/liveapp open in a real headless
Chromium shows an edit to the app's source without the test navigating, because rbd
rebuilds and restarts the app on the socket it holds and the page's own reload script
(tower-livereload) reloads it when the restarted server answers.

The browser is driven over the DevTools protocol (a websocket) and runs in its own
process group; it and every process it started are gone when the test ends."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.sync.client import ClientConnection, connect

from rbd.contract import protocol
from tests.conftest import (
    SHARED_CACHE,
    WAIT_S,
    Events,
    Rbd,
    processes,
    processes_in_group,
)

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/setup installs it)"
)

LIVEAPP = Path(__file__).resolve().parent.parent / "benchmarks" / "liveapp"
# Shared by every test of the session that builds the app: its dependencies (axum,
# tokio: 25 s of a clean build on 2 busy cores) compile once, whatever dir the copy is in.
LIVEAPP_TARGET = SHARED_CACHE / "liveapp-target"
# The first build compiles those dependencies, on 2 cores other tests may be using too.
FIRST_BUILD_S = 600.0
# An edit recompiles the app's own crate and links it, then the app restarts and the
# page reconnects (0.1 s after its reload stream ended: liveapp's reload_interval).
RELOAD_S = 300.0
MESSAGE = re.compile(r'pub const MESSAGE: &str = "([^"]*)";')

T = TypeVar("T")


class DevToolsError(Exception):
    """A DevTools protocol call answered with an error (e.g. no page context during a reload)."""


class Page:
    """One tab, attached over the browser's DevTools connection (a flat session)."""

    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session

    def evaluate(self, expression: str) -> Any:
        """The expression's value in the page; raises DevToolsError where it cannot run
        (mid-navigation) or threw."""
        result = self._browser.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True},
            session=self._session,
        )
        if "exceptionDetails" in result:
            raise DevToolsError(json.dumps(result["exceptionDetails"])[:500])
        return result["result"].get("value")


class Browser:
    """The browser target's DevTools connection; calls are answered in order of their ids
    and events between them are dropped (nothing here subscribes to any)."""

    def __init__(self, websocket: ClientConnection) -> None:
        self._websocket = websocket
        self._last_id = 0

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """The call's result; raises DevToolsError if it failed, TimeoutError if the
        browser did not answer within WAIT_S."""
        self._last_id += 1
        message: dict[str, Any] = {"id": self._last_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        self._websocket.send(json.dumps(message))
        deadline = time.monotonic() + WAIT_S
        while True:
            reply = json.loads(self._websocket.recv(timeout=max(deadline - time.monotonic(), 0)))
            if reply.get("id") != self._last_id:
                continue
            if "error" in reply:
                raise DevToolsError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply["result"]
            return result

    def open(self, url: str) -> Page:
        target = self.call("Target.createTarget", {"url": url})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        return Page(self, session["sessionId"])


def poll(probe: Callable[[], T | None], timeout: float, what: Callable[[], str]) -> T:
    """probe's first value that is not None, asked every 0.1 s; fails with what() after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        assert time.monotonic() < deadline, f"{what()} (waited {timeout:.0f} s)"
        time.sleep(0.1)


def mentioning(text: str) -> list[int]:
    """Live processes whose command line contains text."""
    needle = text.encode()
    return [p.pid for p in processes() if not p.zombie and needle in b" ".join(p.argv)]


@contextlib.contextmanager
def chromium(home: Path) -> Iterator[Browser]:
    """Headless Chromium with its profile, HOME and config below home, in a process group
    of its own that is killed on the way out; then no process of that group is left, nor
    any other naming home.

    Its two crash handlers (chrome_crashpad_handler) setsid() out of the group, with their
    database below HOME, so their command lines name home: they exit by themselves once the
    browser is gone (seen with Debian's Chromium 156), and are killed if they do not.
    Keeping them from starting (--disable-crashpad-for-testing) is no way out: the network
    service then crashes on every start ("FD ownership violation") and no page loads."""
    assert CHROMIUM is not None
    profile = home / "profile"
    argv = [
        CHROMIUM,
        "--headless=new",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        # A tab the browser thinks is hidden has its timers throttled: the page's
        # reconnect timer must run on time.
        "--disable-background-timer-throttling",
        "--disable-renderer-backgrounding",
        "about:blank",
    ]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # Chromium refuses to start as root with its sandbox
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_CACHE_HOME": str(home / "cache"),
    }
    process = subprocess.Popen(
        argv,
        env=env,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(home / "chromium.err").open("wb"),
    )
    try:
        active_port = profile / "DevToolsActivePort"

        def endpoint() -> str | None:
            assert process.poll() is None, "chromium exited: " + tail(home / "chromium.err")
            lines = active_port.read_text().split() if active_port.exists() else []
            return f"ws://127.0.0.1:{lines[0]}{lines[1]}" if len(lines) == 2 else None

        url = poll(endpoint, WAIT_S, lambda: "chromium wrote no DevToolsActivePort")
        # proxy=None: a proxy from the environment must not see a loopback connection.
        with connect(url, proxy=None, max_size=None, open_timeout=WAIT_S) as websocket:
            yield Browser(websocket)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=WAIT_S)
        poll(
            lambda: True if not processes_in_group(process.pid) else None,
            WAIT_S,
            lambda: f"chromium's processes outlived it: {processes_in_group(process.pid)}",
        )
        try:
            poll(
                lambda: True if not mentioning(str(home)) else None,
                WAIT_S,
                lambda: f"chromium's crash handlers outlived it: {mentioning(str(home))}",
            )
        finally:
            for pid in mentioning(str(home)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def app_up(events: Events, timeout: float = WAIT_S) -> dict[str, Any]:
    """The next app_ready event (only a successful build starts the app); fails on
    app_failed, or an exit rbd did not ask for, before it (the replaced instance's exit
    is expected)."""

    def up_or_down(event: dict[str, Any]) -> bool:
        name = event.get("event")
        crashed = name == protocol.APP_EXITED and not event.get("expected")
        return crashed or name in (protocol.APP_READY, protocol.APP_FAILED)

    event = events.wait_for(up_or_down, timeout)
    assert event["event"] == protocol.APP_READY, f"the app did not come up: {event}"
    return event


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.timeout(FIRST_BUILD_S + RELOAD_S + 4 * WAIT_S)
def test_an_open_page_shows_an_edit_by_itself(rbd: Rbd, tmp_path: Path) -> None:
    app = tmp_path / "liveapp"
    shutil.copytree(LIVEAPP, app, ignore=shutil.ignore_patterns("target"))
    message_rs = app / "src" / "message.rs"
    found = MESSAGE.search(message_rs.read_text())
    assert found, f"no MESSAGE constant in {message_rs}"
    before, after = found[1], "Rebuilt and restarted by rbd"
    port = free_port()
    url = f"http://127.0.0.1:{port}/"

    rbd.start_daemon()
    events = rbd.events()
    env = {**rbd.env, "CARGO_TARGET_DIR": str(LIVEAPP_TARGET)}
    started = rbd.run("start", "--run", "--listen", f"127.0.0.1:{port}", cwd=app, env=env)
    assert started.returncode == 0, started.stderr
    first = app_up(events, FIRST_BUILD_S)

    home = tmp_path / "chromium"
    home.mkdir()
    with chromium(home) as browser:
        page = browser.open(url)
        state = "document.readyState + ' ' + (document.body ? document.body.innerText : '')"
        seen: list[str] = []

        def shows(text: str) -> Callable[[], bool | None]:
            def probe() -> bool | None:
                try:
                    seen.append(str(page.evaluate(state)))
                except DevToolsError as error:  # between two documents
                    seen.append(str(error))
                    return None
                return True if seen[-1].startswith("complete ") and text in seen[-1] else None

            return probe

        poll(shows(before), WAIT_S, lambda: f"the page never showed {before!r}: {seen[-3:]}")
        # Gone from a new document only: proof that the page, not the test, reloaded it.
        page.evaluate("window.rbdFirstDocument = true")

        message_rs.write_text(
            MESSAGE.sub(f'pub const MESSAGE: &str = "{after}";', message_rs.read_text())
        )
        poll(shows(after), RELOAD_S, lambda: f"the page never showed {after!r}: {seen[-3:]}")
        assert page.evaluate("window.rbdFirstDocument === undefined"), "same document"
        assert before not in seen[-1]

    second = app_up(events)
    assert second["pid"] != first["pid"]
    assert second["build_id"] != first["build_id"]
