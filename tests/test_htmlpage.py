"""The pictures: `rbd show ID --html FILE` and `rbd report --html FILE` (rbd.client.htmlpage).

The pages of real builds (a three-crate workspace, built by the real daemon) are opened
in a real headless Chromium (tests/cdp.py): they load with no console error, draw one
bar per unit (per build), show a unit's dirty reason when the mouse is over it, and a
screenshot of each is written under the test's temp dir. Without a browser: what comes
from the project is escaped, null phases are drawn as unknown, and the files are
written atomically with the user's umask."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from rbd.client import htmlpage
from rbd.contract import protocol
from rbd.contract.schema import BuildDetail, BuildSummary, Phases, Step, Trend, Unit
from tests.cdp import CHROMIUM, Page, chromium, poll
from tests.conftest import WAIT_S, Rbd

needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (.ci/setup installs it)"
)

SCRIPT = "<script>alert(1)</script>"

WORKSPACE = {
    "Cargo.toml": '[workspace]\nmembers = ["app", "mid", "base"]\nresolver = "2"\n',
    "base/Cargo.toml": '[package]\nname = "base"\nversion = "0.1.0"\nedition = "2021"\n',
    "base/src/lib.rs": "pub fn base() -> u32 {\n    1\n}\n",
    "mid/Cargo.toml": (
        '[package]\nname = "mid"\nversion = "0.1.0"\nedition = "2021"\n\n'
        '[dependencies]\nbase = { path = "../base" }\n'
    ),
    "mid/src/lib.rs": "pub fn mid() -> u32 {\n    base::base() + 1\n}\n",
    "app/Cargo.toml": (
        '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n\n'
        '[dependencies]\nmid = { path = "../mid" }\n'
    ),
    "app/src/main.rs": 'fn main() {\n    println!("{}", mid::mid());\n}\n',
    ".gitignore": "/target\n",
}


def workspace(root: Path) -> Path:
    for relative, text in WORKSPACE.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# --- constructed builds (no daemon, no browser) ----------------------------------------


def phases(**values: float | None) -> Phases:
    measured: dict[str, float | None] = dict.fromkeys(protocol.PHASE_KEYS)
    measured.update(values)
    return measured  # type: ignore[return-value]


def unit(name: str, **fields: Any) -> Unit:
    made: dict[str, Any] = {
        "name": name,
        "target": name,
        "kind": "lib",
        "fresh": False,
        "start_s": 0.1,
        "compile_s": 0.5,
        "frontend_s": None,
        "codegen_s": None,
        "link_s": None,
        "build_script_s": None,
        "total_s": 0.5,
        "dirty_reason": None,
        "critical_path": False,
        "ready_s": None,
        "queue_s": None,
        "path_s": None,
        "failed": False,
    }
    made.update(fields)
    return made  # type: ignore[return-value]


def summary(build_id: int, **fields: Any) -> BuildSummary:
    made: dict[str, Any] = {
        "id": build_id,
        "project": "/work/app",
        "started_at": "2026-01-02T03:04:05.000+00:00",
        "trigger": ["src/main.rs"],
        "command": ["cargo", "build"],
        "config": "default",
        "outcome": "success",
        "wall_s": 1.0,
        "settle_s": 0.02,
        "errors": 0,
        "warnings": 0,
        "units_rebuilt": 1,
        "units_fresh": 2,
        "linker": None,
        "rustc_wrapper": None,
        "phases": phases(overhead_s=0.1, compile_s=0.8, link_s=0.05, other_s=0.05),
        "app": None,
        "kind": "edit",
    }
    made.update(fields)
    return made  # type: ignore[return-value]


def detail(units: list[Unit], **fields: Any) -> BuildDetail:
    made: dict[str, Any] = {
        **summary(7),
        "first_error": None,
        "diagnostics": "",
        "units": units,
        "explain": None,
        "conditions": None,
    }
    made.update(fields)
    return made  # type: ignore[return-value]


def step(build_id: int, before_s: float, after_s: float, changes: list[tuple[str, str]]) -> Step:
    return {
        "build_id": build_id,
        "started_at": "2026-01-02T03:04:05.000+00:00",
        "before_id": build_id - 1,
        "before_s": before_s,
        "after_s": after_s,
        "before_builds": 5,
        "after_builds": 5,
        "changes": [{"what": what, "text": text} for what, text in changes],
    }


def trend(steps: list[Step], searched: int = 20) -> Trend:
    return {
        "project": "/work/app",
        "median_s": 1.0,
        "walls_s": [1.0] * 20,
        "unknown_kind": 0,
        "searched": searched,
        "steps": steps,
    }


def test_what_comes_from_the_project_is_text_not_markup() -> None:
    build = detail(
        [
            unit(SCRIPT, target=f"t{SCRIPT}", kind=f"k{SCRIPT}", dirty_reason=f"why {SCRIPT}"),
            unit("plain", dirty_reason='the file `src/"a".rs` has changed'),
        ],
        project=f"/home/me/{SCRIPT}",
        trigger=[f"src/{SCRIPT}.rs"],
        command=["cargo", "build", SCRIPT],
        outcome="failure",
        diagnostics=f"error: {SCRIPT}\n<img src=x onerror=alert(2)>",
        conditions={
            "rustc": SCRIPT,
            "cargo": None,
            "lock_digest": None,
            "profile": {"debug": SCRIPT},
            "rustflags": SCRIPT,
            "tune": None,
            "settings": {},
        },
        explain={
            "jobs": 2,
            "ncpu": 2,
            "span_s": 1.0,
            "busy": 0.5,
            "saturated_s": 0.2,
            "units_s": 1.0,
            "proc_macro_s": 0.0,
            "build_script_s": 0.0,
            "top_units": [{"name": SCRIPT, "target": SCRIPT, "kind": SCRIPT, "seconds": 0.5}],
            "top_path": [],
        },
    )
    history = [
        summary(9, trigger=[SCRIPT], project=SCRIPT, outcome="failure"),
        summary(8, started_at=SCRIPT, kind=None),
    ]
    steps = trend([step(9, 1.0, 2.0, [(SCRIPT, SCRIPT)]), step(1, 1.0, 2.0, [("x", SCRIPT)])])
    for page in (htmlpage.build_page(build), htmlpage.history_page(SCRIPT, history, steps)):
        # The page's own script is its only one; no project text opened a tag.
        assert page.count("<script") == 1, page
        assert "<img" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    page = htmlpage.build_page(build)
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "src/&quot;a&quot;.rs" in page  # quotes escaped, in attributes too


def test_one_element_per_unit_and_per_build_and_null_is_never_zero() -> None:
    units = [
        unit("a", start_s=0.0, total_s=1.0, critical_path=True, path_s=0.6),
        unit("b", start_s=0.5, total_s=0.2, ready_s=0.1, queue_s=0.4, failed=True),
        unit("c", start_s=None, total_s=None, fresh=True),
        unit("b", target="build-script-build", kind="build-script-run", build_script_s=0.1),
    ]
    build = detail(units, wall_s=2.0, phases=phases(overhead_s=0.1, compile_s=1.0))
    page = htmlpage.build_page(build)
    found = re.findall(r'<g class="unit[^"]*" data-unit="(\d+)"', page)
    assert sorted(int(i) for i in found) == list(range(len(units)))
    assert re.search(r'class="unit critical" data-unit="0"', page)
    assert re.search(r'class="unit failed" data-unit="1"', page)
    assert 'class="queue"' in page  # b waited 0.4 s for a core
    # link_s and others are null: unknown in the table, and the wall time the measured
    # phases leave (2.0 - 1.1 s) is drawn as not measured, not left out.
    assert re.search(r"link</td><td class=\"num\">unknown</td>", page)
    assert 'data-phase="unknown"' in page
    assert "<title>not measured: 900 ms" in page

    history = [
        summary(n, kind=kind) for n, kind in zip((5, 4, 3, 2), protocol.BUILD_KINDS, strict=True)
    ]
    page = htmlpage.history_page("/work/app", history)
    assert sorted(re.findall(r'<g class="build [^"]*" data-build="(\d+)"', page)) == [
        "2",
        "3",
        "4",
        "5",
    ]
    assert "step change" not in page  # no trend in the reply: nothing claimed about steps
    assert "none found in the last 3 edit rebuilds" in htmlpage.history_page(
        "/work/app", history, trend([], searched=3)
    )
    stepped = htmlpage.history_page(
        "/work/app",
        history,
        trend(
            [
                step(4, 1.0, 2.0, [("lockfile", "Cargo.lock changed"), ("rustc", "rustc 1.96")]),
                step(1, 0.5, 1.0, []),
            ]
        ),
    )
    assert re.search(r'<g class="step" data-build="4">', stepped)
    assert "Cargo.lock changed; rustc 1.96; edit rebuild median 1.00 s → 2.00 s" in stepped
    assert "since #1 (before the builds shown): nothing rbd records changed" in stepped
    assert htmlpage.history_page("/work/app", []).count('class="build') == 0


def test_every_phase_key_has_a_colour_and_a_label() -> None:
    assert set(htmlpage.PHASES) == set(protocol.PHASE_KEYS)
    assert set(htmlpage.KINDS) == set(protocol.BUILD_KINDS)


# --- the commands, with the real daemon -------------------------------------------------


def client(
    rbd: Rbd, *args: str, cwd: Path | None = None, umask: int = 0o022, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "rbd.client", *args],
        cwd=cwd,
        env=rbd.env,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
        umask=umask,
    )


# Root without the capabilities that bypass permission bits (as tests/test_cli.py).
AS_A_USER = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


def test_pages_are_written_whole_with_the_user_s_umask_or_not_at_all(
    rbd: Rbd, crate: Path, tmp_path: Path
) -> None:
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    build = events.finished()
    assert build["outcome"] == "success"
    build_id = str(build["id"])
    out = tmp_path / "out"
    out.mkdir()

    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o027, 0o640)):
        page = out / "page.html"
        done = client(rbd, "show", build_id, "--html", str(page), umask=umask)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"rbd: wrote build #{build_id} to {page}"
        assert page.stat().st_mode & 0o777 == mode
        report = out / "report.html"
        done = client(rbd, "report", str(crate), "--html", str(report), umask=umask)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"rbd: wrote 1 builds of {crate} to {report}"
        assert report.stat().st_mode & 0o777 == mode
    assert sorted(p.name for p in out.iterdir()) == ["page.html", "report.html"]  # no temp left

    # --json still prints JSON only; the note goes to stderr.
    done = client(rbd, "show", build_id, "--json", "--html", str(out / "page.html"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["id"] == build["id"]
    assert "wrote build" in done.stderr

    before = (out / "page.html").read_bytes()
    locked = out / "locked"
    locked.mkdir(mode=0o555)
    locked.chmod(0o555)
    bad: list[tuple[tuple[str, ...], str, str]] = [
        ((), str(out), "it is a directory"),
        ((), str(out / "missing" / "page.html"), "No such file or directory"),
    ]
    if os.geteuid() != 0:
        bad.append(((), str(locked / "page.html"), "Permission denied"))
    elif shutil.which("setpriv"):
        bad.append((AS_A_USER, str(locked / "page.html"), "Permission denied"))
    for prefix, path, reason in bad:
        for args in (["show", build_id], ["report", str(crate)]):
            done = client(rbd, *args, "--html", path, prefix=prefix)
            assert done.returncode == 1, (args, path, done.stderr)
            assert done.stderr.splitlines() == [f"rbd: cannot write {path}: {reason}"], done.stderr
            assert done.stdout == ""
    assert list(locked.iterdir()) == []
    assert (out / "page.html").read_bytes() == before

    # report takes only a page; without one it is a usage error.
    assert client(rbd, "report", str(crate)).returncode == 2


def png_size_and_variety(data: bytes) -> tuple[int, int, int]:
    """A PNG's width and height, and how many distinct byte values its pixel rows hold
    (a blank page's are a handful)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    at, width, height, pixels = 8, 0, 0, b""
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            pixels += body
        at += 12 + length
    return width, height, len(set(zlib.decompress(pixels)))


def screenshot(page: Page, path: Path) -> None:
    """The whole page (up to 1600 x 6000 px, in a 1280 px wide window) as a PNG at path;
    asserts it is not blank."""
    page.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False},
    )
    size = page.call("Page.getLayoutMetrics")["cssContentSize"]
    width, height = min(int(size["width"]), 1600), min(int(size["height"]), 6000)
    shot = page.call(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
    png_width, png_height, variety = png_size_and_variety(path.read_bytes())
    assert (png_width, png_height) == (width, height)
    assert width >= 1200 and height >= 300 and variety > 32, (width, height, variety)


def hover(page: Page, selector: str) -> str:
    """Move the mouse over the element's middle (scrolled into view); what the page's
    detail panel then shows."""
    x, y = page.evaluate(
        f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
        " e.scrollIntoView({block: 'center', inline: 'center'});"
        " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
    )
    page.call("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})
    shown = "(d => d.hidden ? '' : d.textContent)(document.getElementById('detail'))"
    return str(
        poll(lambda: page.evaluate(shown) or None, WAIT_S, lambda: f"no detail for {selector}")
    )


def no_errors(page: Page) -> None:
    """Asserts the page reported no error, and that an error would have been seen."""
    assert page.errors() == [], page.errors()
    page.evaluate("console.error('rbd-test: the error probe')")
    page.wait_event("Runtime.consoleAPICalled")
    assert any("the error probe" in json.dumps(error) for error in page.errors())


@needs_chromium
@pytest.mark.timeout(300)
def test_the_pages_of_real_builds_in_a_real_browser(rbd: Rbd, tmp_path: Path) -> None:
    root = workspace(tmp_path / "ws")
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=root)
    first = events.finished()
    assert first["outcome"] == "success"
    (root / "base" / "src" / "lib.rs").write_text("pub fn base() -> u32 {\n    2\n}\n")
    edit = events.finished()
    assert edit["outcome"] == "success" and edit["trigger"] == ["base/src/lib.rs"]
    (root / "mid" / "src" / "lib.rs").write_text('pub fn mid() -> u32 {\n    "one"\n}\n')
    broken = events.finished()
    assert broken["outcome"] == "failure"

    home = tmp_path / "chromium"
    home.mkdir()
    with chromium(home) as browser:
        for build in (first, edit, broken):
            shown = json.loads(rbd.ok("show", str(build["id"]), "--json"))
            units = shown["units"]
            path = tmp_path / f"build-{build['id']}.html"
            assert rbd.ok("show", str(build["id"]), "--html", str(path)).startswith("rbd: wrote")
            page = browser.open("about:blank")
            page.load(path.as_uri())
            assert page.evaluate("document.querySelectorAll('.unit').length") == len(units)
            indexes = page.evaluate(
                "[...document.querySelectorAll('.unit')].map(e => Number(e.dataset.unit))"
            )
            assert sorted(indexes) == list(range(len(units)))
            # base, mid and app ran in the first two; the third stopped at mid.
            assert len(units) >= (1 if build is broken else 3)
            if build is edit:
                # The edited crate says why it was rebuilt, on its row and on hover.
                index, why = next(
                    (i, u["dirty_reason"]) for i, u in enumerate(units) if u["dirty_reason"]
                )
                title = page.evaluate(
                    f"document.querySelector('.unit[data-unit=\"{index}\"] > title').textContent"
                )
                assert why in title
                assert why in hover(page, f'.unit[data-unit="{index}"] .label')
            if build is broken:
                text = page.evaluate("document.body.innerText")
                assert "mismatched types" in text and "Compiler messages" in text
            no_errors(page)
            screenshot(page, tmp_path / f"build-{build['id']}.png")

        history = json.loads(rbd.ok("history", str(root), "--json", "--limit", "200"))
        path = tmp_path / "report.html"
        done = rbd.ok("report", str(root), "--html", str(path))
        assert done.strip() == f"rbd: wrote {len(history)} builds of {root} to {path}"
        page = browser.open("about:blank")
        page.load(path.as_uri())
        drawn = page.evaluate(
            "[...document.querySelectorAll('.build')].map(e => Number(e.dataset.build))"
        )
        # One bar per build, oldest left.
        assert drawn == [b["id"] for b in reversed(history)] and len(drawn) == 3
        assert f"#{broken['id']} · failure" in hover(page, f'.build[data-build="{broken["id"]}"]')
        no_errors(page)
        screenshot(page, tmp_path / "report.png")
