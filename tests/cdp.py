"""A real headless Chromium driven over the DevTools protocol (a websocket), for the tests
that look at a page the way a user would (tests/test_browser.py, tests/test_htmlpage.py).

The browser runs in its own process group; it and every process it started are gone
when `chromium()` exits."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from websockets.sync.client import ClientConnection, connect

from tests.conftest import WAIT_S, processes, processes_in_group

CHROMIUM = shutil.which("chromium")

T = TypeVar("T")


class DevToolsError(Exception):
    """A DevTools protocol call answered with an error (e.g. no page context during a reload)."""


class Page:
    """One tab, attached over the browser's DevTools connection (a flat session)."""

    def __init__(self, browser: Browser, session: str) -> None:
        self._browser = browser
        self._session = session

    def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """A DevTools call in this tab's session (see Browser.call)."""
        return self._browser.call(method, params, session=self._session)

    def evaluate(self, expression: str) -> Any:
        """The expression's value in the page; raises DevToolsError where it cannot run
        (mid-navigation) or threw."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise DevToolsError(json.dumps(result["exceptionDetails"])[:500])
        return result["result"].get("value")

    def load(self, url: str) -> None:
        """Navigate to url with the Page, Runtime and Log domains enabled (so that every
        console message, exception and log entry of the load is kept), and wait until
        its load event fired; TimeoutError if it did not within WAIT_S."""
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")
        since = len(self._browser.events)
        self.call("Page.navigate", {"url": url})
        self._browser.wait_event(
            lambda e: (
                e.get("method") == "Page.loadEventFired" and e.get("sessionId") == self._session
            ),
            since=since,
        )

    def errors(self) -> list[dict[str, Any]]:
        """What the page reported as an error so far: exceptions, console.error (and failed
        console.assert) calls, log entries of level error (CSP violations, failed loads)."""
        found = []
        for event in self.events():
            method, params = event["method"], event.get("params") or {}
            if method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                found.append(params)
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"])
        return found

    def events(self) -> list[dict[str, Any]]:
        """The events of this tab's session received so far, oldest first."""
        return [e for e in self._browser.events if e.get("sessionId") == self._session]

    def wait_event(self, method: str, timeout: float = WAIT_S) -> dict[str, Any]:
        """The first event of this session named method (received already, or next)."""
        return self._browser.wait_event(
            lambda e: e.get("method") == method and e.get("sessionId") == self._session,
            timeout=timeout,
        )


class Browser:
    """The browser target's DevTools connection. Calls are answered in order of their ids;
    the events that arrive meanwhile (of the domains a test enabled) are kept in `events`."""

    def __init__(self, websocket: ClientConnection) -> None:
        self._websocket = websocket
        self._last_id = 0
        self.events: list[dict[str, Any]] = []

    def _receive(self, deadline: float) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(
            self._websocket.recv(timeout=max(deadline - time.monotonic(), 0))
        )
        if "method" in message and "id" not in message:
            self.events.append(message)
        return message

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
            reply = self._receive(deadline)
            if reply.get("id") != self._last_id:
                continue
            if "error" in reply:
                raise DevToolsError(f"{method}: {reply['error']}")
            result: dict[str, Any] = reply["result"]
            return result

    def wait_event(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        since: int = 0,
        timeout: float = WAIT_S,
    ) -> dict[str, Any]:
        """The first event predicate accepts, of those kept from index since on or received
        next; TimeoutError after timeout."""
        seen = since
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[seen:]:
                if predicate(event):
                    return event
            seen = len(self.events)
            self._receive(deadline)

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
