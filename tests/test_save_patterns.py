"""Each editor's way of saving, and a `git checkout` of another branch, build exactly once:
the real daemon and cargo on a tiny crate, the saves as the editors' system calls
(tests/save_patterns.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbd.daemon.watch.ignore import is_editor_temp
from rbd.daemon.watch.plan import is_trigger
from tests.conftest import Events, Rbd, make_crate
from tests.save_patterns import PATTERNS, Pattern, branch_files, git, make_branches


def started(rbd: Rbd, crate: Path) -> Events:
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    return events


def main_rs(message: str) -> str:
    return f'fn main() {{\n    println!("{message}");\n}}\n'


def test_the_editors_temp_names_never_trigger() -> None:
    src = Path("src")
    for name in ("4913", "main.rs~", "main.rs___jb_tmp___", "main.rs___jb_old___"):
        assert is_editor_temp(name), name
    for name in (".#main.rs", "#main.rs#"):
        assert is_editor_temp(name), name
    # Not a temp name of the list, but no trigger either: never a change worth a build.
    assert not is_trigger(src / "main.rs.vsctmp")


@pytest.mark.parametrize("pattern", PATTERNS, ids=[p.label for p in PATTERNS])
def test_an_editor_save_builds_once(rbd: Rbd, crate: Path, pattern: Pattern) -> None:
    events = started(rbd, crate)
    first = events.finished()
    pattern.save(crate / "src" / "main.rs", main_rs(pattern.label), pattern.gap_s, pattern.fsync_s)
    build = events.finished()
    assert build["trigger"] == ["src/main.rs"]
    assert build["outcome"] == "success", build
    # Any other build the save made would come before this one's.
    (crate / "src" / "lib.rs").write_text("pub fn sentinel() {}\n")
    sentinel = events.finished()
    assert sentinel["id"] == first["id"] + 2, "the save built more than once"
    assert sentinel["trigger"] == ["src/lib.rs"]


def test_a_git_checkout_of_another_branch_builds_once(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "demo", files=branch_files())
    modules = make_branches(crate)
    events = started(rbd, crate)
    first = events.finished()
    git(crate, "checkout", "-q", "other")
    build = events.finished()
    assert sorted(build["trigger"]) == sorted(modules)
    assert build["outcome"] == "success", build
    (crate / "src" / "m0.rs").write_text("pub fn f() -> u32 { 7 }\n")
    sentinel = events.finished()
    assert sentinel["id"] == first["id"] + 2, "the checkout built more than once"
    assert sentinel["trigger"] == ["src/m0.rs"]
