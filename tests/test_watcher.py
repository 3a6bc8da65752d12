"""The watcher against what users do to a project's directories: replace them under the
same name, give them names that are not UTF-8. Real daemon, real cargo."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from rbd.contract import protocol
from tests.conftest import WAIT_S, Events, Rbd, make_crate
from tests.test_projects import edit, main_rs, started


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def watched_inodes(pid: int) -> set[int]:
    """The inodes the process's inotify watches are on (from /proc/<pid>/fdinfo)."""
    found = set()
    fdinfo = Path(f"/proc/{pid}/fdinfo")
    for entry in fdinfo.iterdir():
        try:
            text = entry.read_text()
        except OSError:
            continue  # closed meanwhile
        for line in text.splitlines():
            if line.startswith("inotify wd:"):
                fields = dict(f.split(":", 1) for f in line.split()[1:])
                found.add(int(fields["ino"], 16))
    return found


def built(events: Events, relative: str) -> dict[str, object]:
    """The next finished build triggered (also) by relative."""
    event = events.wait_for(
        lambda e: e.get("event") == protocol.BUILD_FINISHED and relative in e["build"]["trigger"]
    )
    build: dict[str, object] = event["build"]
    return build


def log_events(rbd: Rbd, name: str) -> list[dict[str, object]]:
    log = Path(rbd.store).parent / "rbd.log"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == name]


def test_a_project_directory_replaced_under_its_name_is_watched_again(
    rbd: Rbd, tmp_path: Path
) -> None:
    crate = make_crate(tmp_path / "p")
    events = started(rbd, crate)
    events.finished()
    old, copy = tmp_path / "p-old", tmp_path / "p-copy"
    subprocess.run(["cp", "-a", str(crate), str(copy)], check=True)
    # `mv p p-old && cp -a p-old p`, with the path missing for microseconds only: no
    # look at whether it exists falls in between.
    crate.rename(old)
    copy.rename(crate)
    pid = rbd.daemon_pid()
    old_dirs = {old.stat().st_ino, (old / "src").stat().st_ino}
    new_dirs = {crate.stat().st_ino, (crate / "src").stat().st_ino}
    wait_until(
        lambda: not old_dirs & watched_inodes(pid) and new_dirs <= watched_inodes(pid),
        "the watches moved from p-old to the new p",
    )
    edit(crate / "src" / "main.rs", main_rs("in the new p"))
    build = built(events, "src/main.rs")
    assert build["outcome"] == "success" and build["trigger"] == ["src/main.rs"]
    # A save in p-old is not p's: the next build is the next save in p alone.
    edit(old / "src" / "main.rs", main_rs("in p-old"))
    (old / "src" / "old_only.rs").write_text("\n")
    manifest = crate / "Cargo.toml"
    manifest.write_text(manifest.read_text() + "# saved in p\n")
    assert events.finished()["trigger"] == ["Cargo.toml"]
    status = rbd.request(protocol.STATUS, path=str(crate))["projects"][0]
    assert status["problem"] is None and status["state"] in ("idle", "settling", "building")


def test_names_that_are_not_utf8_crash_nothing_and_lose_no_save(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "p")
    root = os.fsencode(crate)
    odd_file = b"src/\xe9t\xe9.rs"
    odd_dir = b"src/d\xe9j\xe0"
    with open(root + b"/" + odd_file, "w") as f:
        f.write("\n")
    os.mkdir(root + b"/" + odd_dir)
    with open(root + b"/" + odd_dir + b"/m.rs", "w") as f:
        f.write("\n")
    events = started(rbd, crate)
    events.finished()
    # rbd reading these files (its plan's digests) was enough to fail the watch.
    for relative in (odd_file, odd_dir + b"/m.rs"):
        with open(root + b"/" + relative, "w") as f:
            f.write("// saved\n")
        build = built(events, os.fsdecode(relative))
        assert build["outcome"] == "success"
        # Stored and shown as os.fsdecode gives the name: it round-trips to the bytes.
        assert build["trigger"] == [os.fsdecode(relative)]
    # A new such name, and a save beside it in the same moment: neither is lost.
    with open(root + b"/src/n\xe9w.rs", "w") as f:
        f.write("\n")
    edit(crate / "src" / "main.rs", main_rs("beside it"))
    wanted = {os.fsdecode(b"src/n\xe9w.rs"), "src/main.rs"}
    seen: set[str] = set()
    while not wanted <= seen:
        seen.update(events.finished()["trigger"])
    history = json.loads(rbd.ok("history", "--json", cwd=crate))
    stored = {os.fsencode(path) for build in history for path in build["trigger"]}
    assert {odd_file, odd_dir + b"/m.rs", b"src/n\xe9w.rs"} <= stored
    # Shown as the JSON escape of that string (the output stays UTF-8), never as raw bytes.
    first = next(b for b in history if os.fsencode(b["trigger"][0]) == odd_file)
    assert "src/\\udce9t\\udce9.rs" in rbd.ok("show", str(first["id"]))
    status = rbd.request(protocol.STATUS, path=str(crate))["projects"][0]
    assert status["problem"] is None
    assert log_events(rbd, "project_failed") == []
