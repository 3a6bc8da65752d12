"""Run mode seen from a browser: a page of benchmarks/liveapp open in a real headless
Chromium shows an edit to the app's source without the test navigating, because rbd
rebuilds and restarts the app on the socket it holds and the page's own reload script
(tower-livereload) reloads it when the restarted server answers.

The browser is driven over the DevTools protocol (tests/cdp.py) and runs in its own
process group; it and every process it started are gone when the test ends."""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rbd.contract import protocol
from tests.cdp import CHROMIUM, DevToolsError, chromium, poll
from tests.conftest import SHARED_CACHE, WAIT_S, Events, Rbd

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
