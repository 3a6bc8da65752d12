"""The watch plan: what is watched flat, what recursively, what never; what is a change."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rbd.daemon.projects.workspace import Workspace
from rbd.daemon.watch.plan import WatchPlan, is_trigger, is_utf8


def tree(root: Path) -> WatchPlan:
    files = {
        "Cargo.toml": "[workspace]\n",
        ".gitignore": "/target\nnode_modules/\n",
        "README.md": "docs\n",
        "src/main.rs": "fn main() {}\n",
        "src/api/mod.rs": "\n",
        "crates/a/Cargo.toml": "[package]\n",
        "crates/a/src/lib.rs": "\n",
        "web/src/x.rs": "\n",
        "web/node_modules/pkg/index.rs": "\n",
        "target/debug/deps/x.rs": "\n",
        ".git/HEAD": "ref\n",
        ".cargo/config.toml": "[build]\n",
    }
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    workspace = Workspace(root, root / "target", (root, root / "crates" / "a"))
    return WatchPlan.build(workspace)


def test_target_vcs_and_ignored_dirs_get_no_watch(tmp_path: Path) -> None:
    plan = tree(tmp_path)
    assert tmp_path in plan.flat
    assert tmp_path / "web" in plan.flat  # it holds an ignored directory
    assert set(plan.recursive) == {
        tmp_path / "src",
        tmp_path / "crates",
        tmp_path / "web" / "src",
        tmp_path / ".cargo",
    }
    watched = plan.flat + plan.recursive
    for excluded in ("target", ".git", "web/node_modules"):
        assert not any(w.is_relative_to(tmp_path / excluded) for w in watched), excluded


def test_target_dir_that_does_not_exist_yet_still_keeps_its_parent_flat(tmp_path: Path) -> None:
    (tmp_path / "Cargo.toml").write_text("[package]\n")
    (tmp_path / "sub" / "src").mkdir(parents=True)
    workspace = Workspace(tmp_path, tmp_path / "sub" / "out", (tmp_path,))
    plan = WatchPlan.build(workspace)
    assert tmp_path / "sub" in plan.flat
    assert tmp_path / "sub" / "src" in plan.recursive


def test_only_build_inputs_are_digested(tmp_path: Path) -> None:
    plan = tree(tmp_path)
    relative = {str(p.relative_to(tmp_path)) for p in plan.digests}
    assert relative == {
        "Cargo.toml",
        "src/main.rs",
        "src/api/mod.rs",
        "crates/a/Cargo.toml",
        "crates/a/src/lib.rs",
        "web/src/x.rs",
        ".cargo/config.toml",
    }
    assert is_trigger(Path("x/build.rs")) and is_trigger(Path("Cargo.lock"))
    assert not is_trigger(Path("config.toml")) and not is_trigger(Path("README.md"))


def test_changed_means_different_content(tmp_path: Path) -> None:
    plan = tree(tmp_path)
    main = tmp_path / "src" / "main.rs"
    main.write_text(main.read_text())
    assert not plan.changed(main)
    main.write_text("fn main() { }\n")
    assert plan.changed(main)
    assert not plan.changed(main)
    fresh = tmp_path / "src" / "new.rs"
    fresh.write_text("\n")
    assert plan.changed(fresh)
    main.unlink()
    assert plan.changed(main)
    assert not plan.changed(tmp_path / "src" / "never-existed.rs")
    swap = tmp_path / "src" / ".main.rs.swp"
    swap.write_text("x")
    assert not plan.changed(swap)
    ignored = tmp_path / "web" / "node_modules" / "pkg" / "index.rs"
    ignored.write_text("changed\n")
    assert not plan.changed(ignored)
    assert not plan.changed(tmp_path / "target" / "debug" / "deps" / "x.rs")


def test_replan_for_new_dirs_where_only_a_flat_watch_sees_them(tmp_path: Path) -> None:
    plan = tree(tmp_path)
    (tmp_path / "benches").mkdir()
    assert plan.needs_replan(tmp_path / "benches")
    (tmp_path / "notes.txt").write_text("")
    assert not plan.needs_replan(tmp_path / "notes.txt")
    (tmp_path / "target" / "release").mkdir()
    assert not plan.needs_replan(tmp_path / "target")
    assert plan.needs_replan(tmp_path / ".gitignore")
    (tmp_path / "src" / "deep").mkdir()
    assert not plan.needs_replan(tmp_path / "src" / "deep")  # the recursive watch covers it


def test_dirs_with_names_that_are_not_utf8_are_polled_never_watched(tmp_path: Path) -> None:
    # watchfiles fails a whole batch on any event for such a name (rbd's own read of
    # the file included) and cannot be given such a directory at all.
    tree(tmp_path)
    root = os.fsencode(tmp_path)
    with open(root + b"/src/api/\xe9t\xe9.rs", "w") as f:
        f.write("\n")
    os.makedirs(root + b"/web/src/d\xe9j\xe0/inner")
    with open(root + b"/web/src/d\xe9j\xe0/inner/m.rs", "w") as f:
        f.write("\n")
    workspace = Workspace(tmp_path, tmp_path / "target", (tmp_path, tmp_path / "crates" / "a"))
    plan = WatchPlan.build(workspace)
    odd_dir = Path(os.fsdecode(root + b"/web/src/d\xe9j\xe0"))
    assert set(plan.polled) == {
        tmp_path / "src" / "api",
        tmp_path / "web" / "src",
        odd_dir,
        odd_dir / "inner",
    }
    watched = [*plan.flat, *plan.recursive]
    assert all(is_utf8(str(p)) for p in watched)
    for polled in plan.polled:
        assert not any(polled.is_relative_to(w) for w in plan.recursive), polled
    assert tmp_path / "src" in plan.flat and tmp_path / "web" / "src" not in plan.flat
    # Their files are still build inputs, their names kept as os.fsdecode gives them.
    assert Path(os.fsdecode(root + b"/src/api/\xe9t\xe9.rs")) in plan.digests
    assert odd_dir / "inner" / "m.rs" in plan.digests
    (odd_dir / "new").mkdir()
    assert plan.needs_replan(odd_dir / "new")  # a polled directory is a flat watch


def test_a_watched_dir_replaced_under_its_name_needs_a_new_plan(tmp_path: Path) -> None:
    plan = tree(tmp_path)
    assert plan.replaced() == []
    src = tmp_path / "src"
    src.rename(tmp_path / "src-old")
    shutil.copytree(tmp_path / "src-old", src)
    # The watch followed src-old: same name, another directory.
    assert plan.needs_replan(src)
    assert not plan.needs_replan(tmp_path / "crates")
    moved = tmp_path.with_name(tmp_path.name + "-old")
    tmp_path.rename(moved)
    try:
        assert plan.replaced() == [tmp_path]
        shutil.copytree(moved, tmp_path, symlinks=True)
        assert plan.replaced() == [tmp_path]
    finally:
        shutil.rmtree(moved)
