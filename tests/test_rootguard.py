"""A project moved away mid-build: the build ends once (cancelled), the project shows
`gone`, and nothing is left at its old path (cargo recreates it by absolute path)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rbd.daemon.build import rootguard
from tests.conftest import SLOW_MAIN, Rbd, make_crate, rustc_processes_under
from tests.test_projects import edit, main_rs, started, wait_for_state

# A build script that moves its own project away once (when `move-me` exists): cargo
# goes on, fails to run rustc in the vanished directory, and writes its timings report
# and rustc cache by absolute path, recreating the old root before any kill can land.
MOVING_BUILD_RS = """\
fn main() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if root.join("move-me").exists() {
        std::fs::remove_file(root.join("move-me")).unwrap();
        let moved = format!("{}-moved", root.display());
        std::fs::rename(&root, moved).unwrap();
    }
}
"""


def moved_back_and_built(rbd: Rbd, crate: Path, moved: Path) -> None:
    moved.rename(crate)  # lands at the old path, not inside a recreated one
    assert (crate / "Cargo.toml").is_file()
    wait_for_state(rbd, crate, "idle")
    edit(crate / "src" / "main.rs", main_rs("back"))


def outcomes(rbd: Rbd, crate: Path) -> list[str]:
    return [b["outcome"] for b in json.loads(rbd.ok("history", "--json", cwd=crate))]


def test_moved_away_mid_build_is_one_cancelled_build_and_gone(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "p", files={"src/main.rs": SLOW_MAIN})
    events = started(rbd, crate)
    events.started()
    deadline = time.monotonic() + 60
    while not rustc_processes_under(crate):
        assert time.monotonic() < deadline, "rustc never ran"
        time.sleep(0.02)
    moved = tmp_path / "p-old"
    crate.rename(moved)
    build = events.finished()
    # Cancelled once the watcher sees the root go; on a loaded machine rustc may fail
    # first, writing into the vanished directory. Either way: one build, recorded once.
    assert build["outcome"] in ("cancelled", "failure")
    wait_for_state(rbd, crate, "gone")
    assert not crate.exists()
    moved_back_and_built(rbd, crate, moved)
    again = events.finished()
    assert again["outcome"] == "success" and again["trigger"] == ["src/main.rs"]
    assert outcomes(rbd, crate) == ["success", build["outcome"]]


def test_what_cargo_recreates_at_the_old_path_is_removed(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "p", files={"build.rs": MOVING_BUILD_RS, "move-me": ""})
    moved = tmp_path / "p-moved"
    events = started(rbd, crate)
    build = events.finished()
    assert moved.is_dir()
    assert build["outcome"] in ("cancelled", "failure")
    wait_for_state(rbd, crate, "gone")
    assert not crate.exists(), sorted(str(p) for p in crate.rglob("*"))
    moved_back_and_built(rbd, crate, moved)
    events.finished()
    assert outcomes(rbd, crate)[1:] == [build["outcome"]]


def test_only_a_recreation_is_removed(tmp_path: Path) -> None:
    parent = tmp_path / "parent"
    root = make_crate(parent / "p")
    before = rootguard.lineage(root)
    since = time.time_ns()
    parent.rename(tmp_path / "parent-old")
    # As cargo leaves it: the root and its parent recreated, with new files only.
    (root / "target" / "cargo-timings").mkdir(parents=True)
    (root / "target" / "cargo-timings" / "cargo-timing.html").write_text("")
    (root / "target" / ".rustc_info.json").write_text("{}")
    assert rootguard.remove_recreated(before, since) == parent
    assert not parent.exists()

    # The user's own: a project again, or anything older than the build, stays.
    (tmp_path / "parent-old").rename(parent)
    before = rootguard.lineage(root)
    since = time.time_ns()
    root.rename(tmp_path / "p-copy")
    make_crate(root)
    assert rootguard.remove_recreated(before, since) is None
    assert (root / "Cargo.toml").is_file()
    (root / "Cargo.toml").unlink()
    old = root / "target" / "old.txt"
    old.parent.mkdir()
    old.write_text("")
    os.utime(old, ns=(since - 10**9, since - 10**9))
    assert rootguard.remove_recreated(before, since) is None
    assert old.is_file()
    # Nothing moved: nothing to do.
    assert rootguard.remove_recreated(rootguard.lineage(root), since) is None
