"""The bench's copy of a workspace, and the edits it makes (rbd.daemon.bench.source)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rbd.daemon.bench import source
from rbd.daemon.errors import ConfigError
from tests.conftest import make_crate

TRICKY = """\
#![allow(dead_code)]
//! Crate docs with a "quoted" word.
use std::fmt;

#[derive(Debug)]
#[doc = "not this one"]
struct S;

const RAW: &str = r#"a raw "string""#;
const BYTES: &[u8] = b"bytes";
static DATA: &str = include_str!("data.txt");
extern "C" {
    fn abs(x: i32) -> i32;
}

fn quote() -> char {
    '"'
}

fn greet<'a>(name: &'a str) -> String {
    let _ = env!("CARGO_PKG_NAME");
    format!("hello {name}") /* a "block" comment */
}
"""


def test_plan_edit_picks_a_plain_literal_inside_a_function() -> None:
    edit = source.plan_edit(TRICKY)
    assert edit.kind == "string"
    edited = edit.apply(TRICKY, 7)
    assert 'format!("hello {name} [rbd bench 000007]")' in edited
    # Nothing else moved: the edit is an insertion at one place.
    assert edited.replace(" [rbd bench 000007]", "") == TRICKY
    # Each run's edit differs and keeps the same length (the same spans shift alike).
    other = edit.apply(TRICKY, 8)
    assert other != edited and len(other) == len(edited)


def test_literals_that_are_paths_abis_or_attributes_are_never_edited() -> None:
    text = (
        '#[path = "x.rs"]\nmod m;\nextern "C" {}\n'
        'const A: &str = include_str!("a.txt");\n'
        'const B: &str = r"raw";\nconst C: char = \'"\';\n'
        "// only a comment here\n"
    )
    edit = source.plan_edit(text)
    assert edit.kind == "comment"
    assert "// only a comment here [rbd bench 000001]\n" in edit.apply(text, 1)


def test_a_file_without_literal_or_comment_gets_a_comment_appended() -> None:
    text = "fn main() {}"
    edit = source.plan_edit(text)
    assert edit.kind == "appended comment"
    assert edit.apply(text, 3) == "fn main() {}\n// rbd bench 000003\n"


def test_comment_only_fallback_skips_string_literals() -> None:
    edit = source.plan_edit(TRICKY, comment_only=True)
    assert edit.kind == "comment"
    assert '//! Crate docs with a "quoted" word. [rbd bench 000002]' in edit.apply(TRICKY, 2)


def test_top_level_literal_is_used_when_no_function_has_one() -> None:
    text = 'const GREETING: &str = "hi";\nfn main() { let _ = GREETING; }\n'
    edit = source.plan_edit(text)
    assert edit.apply(text, 1).startswith('const GREETING: &str = "hi [rbd bench 000001]";')


def test_copy_skips_vcs_and_target_dirs_and_points_outside_path_deps_at_their_place(
    tmp_path: Path,
) -> None:
    outside = make_crate(
        tmp_path / "shared",
        "shared",
        {"src/lib.rs": "pub fn answer() -> u32 { 42 }\n"},
    )
    (outside / "src" / "main.rs").unlink()
    root = make_crate(
        tmp_path / "app",
        "app",
        {
            "Cargo.toml": '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n'
            "# the shared crate lives next door\n"
            '[dependencies]\nshared = { path = "../shared" }\n'
            '[workspace]\nmembers = ["inner"]\n',
            "src/main.rs": 'fn main() { println!("{}", shared::answer()); }\n',
            "inner/Cargo.toml": '[package]\nname = "inner"\nversion = "0.1.0"\n'
            'edition = "2021"\n[dependencies]\napp_lib = { path = "../lib", package = "lib" }\n',
            "inner/src/lib.rs": "",
            "lib/Cargo.toml": '[package]\nname = "lib"\nversion = "0.1.0"\nedition = "2021"\n',
            "lib/src/lib.rs": "",
            ".git/HEAD": "ref: refs/heads/main\n",
            "old-target/CACHEDIR.TAG": "Signature: 8a477f597d28d172789f06886806bc55\n",
            ".cargo/config.toml": "[build]\nincremental = true\n",
        },
    )
    target = root / "target"
    (target / "debug").mkdir(parents=True)
    copy = target / "rbd" / "bench" / "src"
    files = source.copy_workspace(root, target, copy)
    assert files > 0
    assert not (copy / ".git").exists()
    assert not (copy / "old-target").exists()
    assert not (copy / "target").exists()
    # Inside root, cargo finds root's own .cargo above the copy: no duplicate.
    assert not (copy / ".cargo").exists()
    manifest = (copy / "Cargo.toml").read_text()
    assert f'shared = {{ path = "{outside.resolve()}" }}' in manifest
    assert "# the shared crate lives next door" in manifest
    # A path dependency inside the workspace stays relative (it was copied too).
    assert 'path = "../lib"' in (copy / "inner" / "Cargo.toml").read_text()
    done = subprocess.run(
        ["cargo", "build", "--offline", "--workspace", "--target-dir", str(tmp_path / "t")],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    # Copied with fresh mtimes: a copy is never older than what a bench built before.
    assert (copy / "src" / "main.rs").stat().st_mtime >= (root / "src" / "main.rs").stat().st_mtime


def test_copy_outside_the_root_takes_the_cargo_config_along(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "app", files={".cargo/config.toml": "[build]\njobs = 1\n"})
    copy = tmp_path / "elsewhere" / "src"
    source.copy_workspace(root, tmp_path / "elsewhere", copy)
    assert (copy / ".cargo" / "config.toml").read_text() == "[build]\njobs = 1\n"


def test_a_second_copy_replaces_the_first(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "app")
    copy = root / "target" / "rbd" / "bench" / "src"
    source.copy_workspace(root, root / "target", copy)
    (copy / "src" / "stale.rs").write_text("")
    source.copy_workspace(root, root / "target", copy)
    assert not (copy / "src" / "stale.rs").exists()


def test_edit_target_prefers_the_most_edited_file_then_main_then_lib(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "app", files={"src/lib.rs": "", "src/util.rs": ""})
    triggers = [["src/util.rs"], ["src/util.rs", "Cargo.toml"], ["src/gone.rs"] * 3]
    assert source.edit_target(root, [root], triggers, None) == Path("src/util.rs")
    assert source.edit_target(root, [root], [], None) == Path("src/main.rs")
    os.remove(root / "src" / "main.rs")
    assert source.edit_target(root, [root], [], None) == Path("src/lib.rs")


def test_edit_target_refuses_files_outside_the_project_or_not_rust(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "app")
    (tmp_path / "elsewhere.rs").write_text("")
    with pytest.raises(ConfigError, match="not inside the project"):
        source.edit_target(root, [root], [], str(tmp_path / "elsewhere.rs"))
    with pytest.raises(ConfigError, match="not a Rust source"):
        source.edit_target(root, [root], [], "Cargo.toml")
    with pytest.raises(ConfigError, match="not a Rust source"):
        source.edit_target(root, [root], [], "src/missing.rs")
    assert source.edit_target(root, [root], [], "src/main.rs") == Path("src/main.rs")


def test_broken_manifest_is_copied_as_it_is(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "app", files={"Cargo.toml": "[package\n"})
    copy = tmp_path / "copy"
    source.copy_workspace(root, root / "target", copy)
    assert (copy / "Cargo.toml").read_text() == "[package\n"


def test_own_file_replaces_every_link_on_the_way(tmp_path: Path) -> None:
    """A linked source dir and a linked file in the copy: what the bench writes lands in
    the copy, and what the links lead to keeps its bytes."""
    outside = tmp_path / "outside"
    (outside / "src").mkdir(parents=True)
    (outside / "src" / "main.rs").write_text("fn main() {}\n")
    (outside / "Cargo.toml").write_text('[package]\nname = "x"\n')
    root = tmp_path / "root"
    root.mkdir()
    (root / "src").symlink_to(outside / "src")
    (root / "Cargo.toml").symlink_to(outside / "Cargo.toml")
    copy = tmp_path / "copy"
    source.copy_workspace(root, root / "target", copy)
    assert (copy / "src").is_symlink()

    edited = source.own_file(copy, Path("src/main.rs"))
    source.write_own(edited, "fn main() { /* rbd bench */ }\n")
    source.write_own(copy / "Cargo.toml", '[package]\nname = "y"\n')

    assert (outside / "src" / "main.rs").read_text() == "fn main() {}\n"
    assert (outside / "Cargo.toml").read_text() == '[package]\nname = "x"\n'
    assert not (copy / "src").is_symlink() and not edited.is_symlink()
    assert edited.read_text() == "fn main() { /* rbd bench */ }\n"
