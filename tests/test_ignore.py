from __future__ import annotations

from pathlib import Path

import pytest

from rbd.daemon.watch.ignore import ALWAYS_IGNORED_DIRS, IgnoreRules, is_editor_temp


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _rules(root: Path, gitignore: str) -> IgnoreRules:
    _write(root / ".gitignore", gitignore)
    return IgnoreRules.load(root)


def test_missing_files_ignore_nothing(tmp_path: Path) -> None:
    rules = IgnoreRules.load(tmp_path)
    assert not rules.is_ignored(tmp_path / "src" / "main.rs", False)
    assert not rules.is_ignored(tmp_path / "target", True)


def test_comments_blank_lines_and_escapes(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "# target\n\n   \n\\#notes\n\\!bang\n")
    assert not rules.is_ignored(tmp_path / "# target", False)
    assert not rules.is_ignored(tmp_path / "target", True)
    assert rules.is_ignored(tmp_path / "#notes", False)
    assert rules.is_ignored(tmp_path / "!bang", False)
    assert not rules.is_ignored(tmp_path / "bang", False)


def test_trailing_spaces_trimmed_unless_escaped(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "trail   \nspaced\\ \n")
    assert rules.is_ignored(tmp_path / "trail", False)
    assert not rules.is_ignored(tmp_path / "trail   ", False)
    assert rules.is_ignored(tmp_path / "spaced ", False)
    assert not rules.is_ignored(tmp_path / "spaced", False)


def test_crlf_line_endings(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "*.log\r\nout\r\n")
    assert rules.is_ignored(tmp_path / "a.log", False)
    assert rules.is_ignored(tmp_path / "out", False)


def test_unanchored_pattern_matches_basename_at_any_depth(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "*.log\nscratch\n")
    assert rules.is_ignored(tmp_path / "a.log", False)
    assert rules.is_ignored(tmp_path / "deep" / "er" / "b.log", False)
    assert rules.is_ignored(tmp_path / "src" / "scratch", True)
    assert not rules.is_ignored(tmp_path / "a.logx", False)
    assert not rules.is_ignored(tmp_path / "src" / "main.rs", False)


def test_star_and_question_mark_do_not_cross_slash(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "src/*.rs\nx?z\n")
    assert rules.is_ignored(tmp_path / "src" / "lib.rs", False)
    assert not rules.is_ignored(tmp_path / "src" / "bin" / "main.rs", False)
    assert rules.is_ignored(tmp_path / "xyz", False)
    assert not rules.is_ignored(tmp_path / "xz", False)
    assert not rules.is_ignored(tmp_path / "x" / "z", False)


def test_character_classes(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "*.[oa]\nv[!0-9]\nw[^a-c]\n[[:digit:]]x\n[]]y\n")
    assert rules.is_ignored(tmp_path / "foo.o", False)
    assert rules.is_ignored(tmp_path / "foo.a", False)
    assert not rules.is_ignored(tmp_path / "foo.c", False)
    assert rules.is_ignored(tmp_path / "vx", False)
    assert not rules.is_ignored(tmp_path / "v1", False)
    assert rules.is_ignored(tmp_path / "wd", False)
    assert not rules.is_ignored(tmp_path / "wb", False)
    assert rules.is_ignored(tmp_path / "7x", False)
    assert not rules.is_ignored(tmp_path / "ax", False)
    assert rules.is_ignored(tmp_path / "]y", False)


def test_invalid_patterns_never_match(tmp_path: Path) -> None:
    # As in git: an unclosed "[", a reversed range or a trailing backslash matches nothing.
    rules = _rules(tmp_path, "[abc\n[z-a]\ntrailing\\\nok\n")
    for name in ("[abc", "a", "b", "z", "trailing", "trailing\\"):
        assert not rules.is_ignored(tmp_path / name, False), name
    assert rules.is_ignored(tmp_path / "ok", False)


def test_negation_last_match_wins(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "*.log\n!keep.log\nkeep2.log\n!keep2.log\n*.log\n")
    assert rules.is_ignored(tmp_path / "a.log", False)
    assert rules.is_ignored(tmp_path / "keep.log", False)  # the final "*.log" wins again
    rules = _rules(tmp_path, "*.log\n!keep.log\n")
    assert not rules.is_ignored(tmp_path / "keep.log", False)
    assert not rules.is_ignored(tmp_path / "sub" / "keep.log", False)
    assert rules.is_ignored(tmp_path / "sub" / "other.log", False)


def test_dir_only_pattern(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "target/\n")
    assert rules.is_ignored(tmp_path / "target", True)
    assert rules.is_ignored(tmp_path / "crates" / "a" / "target", True)
    assert rules.is_ignored(tmp_path / "target" / "debug" / "app", False)
    # A file that merely has the directory's name is not ignored.
    assert not rules.is_ignored(tmp_path / "target", False)
    assert not rules.is_ignored(tmp_path / "src" / "target", False)


def test_dir_only_rule_skipped_for_files_when_finding_last_match(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "gen\n!gen/\n")
    assert rules.is_ignored(tmp_path / "gen", False)
    assert not rules.is_ignored(tmp_path / "gen", True)


def test_anchoring(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "/todo\ndoc/frotz\n/build/\n")
    assert rules.is_ignored(tmp_path / "todo", False)
    assert not rules.is_ignored(tmp_path / "src" / "todo", False)
    assert rules.is_ignored(tmp_path / "doc" / "frotz", False)
    assert not rules.is_ignored(tmp_path / "a" / "doc" / "frotz", False)
    assert rules.is_ignored(tmp_path / "build", True)
    assert not rules.is_ignored(tmp_path / "build", False)
    assert not rules.is_ignored(tmp_path / "x" / "build", True)


def test_double_star_forms(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "**/gen\nlogs/**\na/**/b\n**/cache/\n")
    assert rules.is_ignored(tmp_path / "gen", False)
    assert rules.is_ignored(tmp_path / "x" / "y" / "gen", False)
    assert not rules.is_ignored(tmp_path / "logs", True)  # "/**" matches the inside only
    assert rules.is_ignored(tmp_path / "logs" / "today", False)
    assert rules.is_ignored(tmp_path / "logs" / "x" / "y", False)
    assert rules.is_ignored(tmp_path / "a" / "b", False)
    assert rules.is_ignored(tmp_path / "a" / "x" / "b", False)
    assert rules.is_ignored(tmp_path / "a" / "x" / "y" / "b", False)
    assert not rules.is_ignored(tmp_path / "a" / "xb", False)
    assert not rules.is_ignored(tmp_path / "z" / "a" / "b", False)
    assert rules.is_ignored(tmp_path / "p" / "cache", True)
    assert not rules.is_ignored(tmp_path / "p" / "cache", False)


def test_other_consecutive_stars_are_plain_stars(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "foo**bar\n")
    assert rules.is_ignored(tmp_path / "fooXbar", False)
    assert not rules.is_ignored(tmp_path / "foo" / "bar", False)


def test_double_star_inside_can_be_reincluded(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "vendor/**\n!vendor/keep.rs\n")
    assert rules.is_ignored(tmp_path / "vendor" / "other.rs", False)
    assert not rules.is_ignored(tmp_path / "vendor" / "keep.rs", False)


def test_excluded_parent_cannot_be_reincluded(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "out/\n!out/keep.rs\n!keep.txt\n")
    assert rules.is_ignored(tmp_path / "out" / "keep.rs", False)
    assert rules.is_ignored(tmp_path / "out" / "deep" / "keep.txt", False)
    assert not rules.is_ignored(tmp_path / "keep.txt", False)


def test_reinclude_directory_after_excluding_its_contents(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "/*\n!/src/\n/src/*\n!/src/main.rs\n")
    assert rules.is_ignored(tmp_path / "Cargo.lock", False)
    assert not rules.is_ignored(tmp_path / "src", True)
    assert not rules.is_ignored(tmp_path / "src" / "main.rs", False)
    assert rules.is_ignored(tmp_path / "src" / "lib.rs", False)


def test_nested_gitignore_is_relative_to_its_directory(tmp_path: Path) -> None:
    _write(tmp_path / ".gitignore", "*.log\n")
    nested = _write(tmp_path / "crates" / "app" / ".gitignore", "/local\n!*.log\ngen/\n")
    rules = IgnoreRules.load(tmp_path)
    rules.add_file(nested)
    app = tmp_path / "crates" / "app"
    assert rules.is_ignored(app / "local", False)
    assert not rules.is_ignored(app / "src" / "local", False)  # anchored to crates/app
    assert not rules.is_ignored(tmp_path / "local", False)  # rules apply below app only
    assert rules.is_ignored(app / "gen" / "x.rs", False)
    assert not rules.is_ignored(tmp_path / "gen", True)
    # The nested negation overrides the root rule, but only inside crates/app.
    assert not rules.is_ignored(app / "run.log", False)
    assert not rules.is_ignored(app / "deep" / "run.log", False)
    assert rules.is_ignored(tmp_path / "crates" / "run.log", False)


def test_nested_rules_do_not_apply_to_their_own_directory(tmp_path: Path) -> None:
    nested = _write(tmp_path / "sub" / ".gitignore", "sub\n")
    rules = IgnoreRules.load(tmp_path)
    rules.add_file(nested)
    assert not rules.is_ignored(tmp_path / "sub", True)
    assert rules.is_ignored(tmp_path / "sub" / "sub", True)


def test_nested_file_cannot_reinclude_inside_excluded_parent(tmp_path: Path) -> None:
    _write(tmp_path / ".gitignore", "vendor/\n")
    nested = _write(tmp_path / "vendor" / ".gitignore", "!*\n")
    rules = IgnoreRules.load(tmp_path)
    rules.add_file(nested)
    assert rules.is_ignored(tmp_path / "vendor" / "lib.rs", False)


def test_dot_ignore_and_info_exclude(tmp_path: Path) -> None:
    _write(tmp_path / ".git" / "info" / "exclude", "secret.txt\n*.bak\n")
    _write(tmp_path / ".gitignore", "!keep.bak\nnotes/\n")
    _write(tmp_path / ".ignore", "bench-data/\n!notes/\n")
    rules = IgnoreRules.load(tmp_path)
    assert rules.is_ignored(tmp_path / "secret.txt", False)
    assert rules.is_ignored(tmp_path / "old.bak", False)
    assert not rules.is_ignored(tmp_path / "keep.bak", False)  # .gitignore beats exclude
    assert rules.is_ignored(tmp_path / "bench-data", True)
    assert not rules.is_ignored(tmp_path / "notes", True)  # .ignore beats .gitignore


def test_nested_dot_ignore(tmp_path: Path) -> None:
    nested_git = _write(tmp_path / "a" / ".gitignore", "*.dat\n")
    nested_ignore = _write(tmp_path / "a" / ".ignore", "!big.dat\n")
    rules = IgnoreRules.load(tmp_path)
    rules.add_file(nested_git)
    rules.add_file(nested_ignore)
    assert rules.is_ignored(tmp_path / "a" / "x.dat", False)
    assert not rules.is_ignored(tmp_path / "a" / "big.dat", False)


def test_add_missing_or_unreadable_file_is_silent(tmp_path: Path) -> None:
    rules = IgnoreRules.load(tmp_path)
    rules.add_file(tmp_path / "nope" / ".gitignore")
    (tmp_path / "dir" / ".gitignore").mkdir(parents=True)  # reading a directory fails
    rules.add_file(tmp_path / "dir" / ".gitignore")
    rules.add_file(Path("/definitely/outside") / ".gitignore")
    assert not rules.is_ignored(tmp_path / "nope" / "x", False)


def test_readding_a_file_replaces_its_rules(tmp_path: Path) -> None:
    nested = _write(tmp_path / "a" / ".gitignore", "old\n")
    rules = IgnoreRules.load(tmp_path)
    rules.add_file(nested)
    assert rules.is_ignored(tmp_path / "a" / "old", True)
    nested.write_text("new\n")
    rules.add_file(nested)
    assert not rules.is_ignored(tmp_path / "a" / "old", True)
    assert rules.is_ignored(tmp_path / "a" / "new" / "f", False)
    nested.unlink()
    rules.add_file(nested)
    assert not rules.is_ignored(tmp_path / "a" / "new" / "f", False)


def test_paths_outside_root_and_root_itself(tmp_path: Path) -> None:
    root = tmp_path / "proj"
    rules = _rules(root, "*\n")
    assert rules.is_ignored(root / "anything", False)
    assert not rules.is_ignored(tmp_path / "other" / "anything", False)
    assert not rules.is_ignored(tmp_path / "proj-sibling" / "x", False)
    assert not rules.is_ignored(root, True)
    assert not rules.is_ignored(Path("/"), True)


@pytest.mark.parametrize("name", sorted(ALWAYS_IGNORED_DIRS))
def test_vcs_dirs_always_ignored(tmp_path: Path, name: str) -> None:
    rules = _rules(tmp_path, f"!{name}\n!{name}/\n")
    assert rules.is_ignored(tmp_path / name, True)
    assert rules.is_ignored(tmp_path / name / "HEAD", False)
    assert rules.is_ignored(tmp_path / "sub" / name / "objects" / "ab", False)
    assert not rules.is_ignored(tmp_path / name, False)  # a file: only the rules decide


def test_always_ignored_dirs_contents() -> None:
    assert frozenset({".git", ".hg", ".svn", ".jj"}) == ALWAYS_IGNORED_DIRS


def test_cache_is_invalidated_by_new_rules(tmp_path: Path) -> None:
    rules = IgnoreRules.load(tmp_path)
    assert not rules.is_ignored(tmp_path / "gen" / "x.rs", False)
    nested = _write(tmp_path / ".ignore", "gen/\n")
    rules.add_file(nested)
    assert rules.is_ignored(tmp_path / "gen" / "x.rs", False)


def test_many_paths_stay_consistent(tmp_path: Path) -> None:
    rules = _rules(tmp_path, "target/\n*.tmp\n")
    for i in range(10_000):  # more directories than the bounded cache holds
        assert not rules.is_ignored(tmp_path / f"d{i}" / "main.rs", False)
        assert rules.is_ignored(tmp_path / f"d{i}" / "target" / "x", False)
    assert rules.is_ignored(tmp_path / "d1" / "a.tmp", False)


@pytest.mark.parametrize(
    "name",
    [
        "main.rs.swp",
        ".main.rs.swp",
        ".main.rs.swo",
        ".main.rs.swx",
        ".lib.rs.swn",
        "4913",
        "main.rs~",
        "#main.rs#",
        ".#main.rs",
        ".main.rs.kate-swp",
        "main.rs___jb_tmp___",
        "main.rs___jb_old___",
        ".DS_Store",
        ".~lock.notes.odt#",
    ],
)
def test_editor_temp_names(name: str) -> None:
    assert is_editor_temp(name)


@pytest.mark.parametrize(
    "name",
    [
        "main.rs",
        "lib.rs",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        ".gitignore",
        "swp.rs",
        "4913.rs",
        "49134",
        "#",
        "#notes",
        "notes#",
        "DS_Store",
        "a.kate",
        ".~lock.notes.odt",
        "readme.md",
    ],
)
def test_not_editor_temp_names(name: str) -> None:
    assert not is_editor_temp(name)
