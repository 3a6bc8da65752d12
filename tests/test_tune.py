"""Tuning edits: comments and layout survive, reverts are byte for byte, cargo vets each change."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from rbd.daemon.advice.tune import (
    Change,
    FileEdit,
    apply,
    change_from_json,
    change_to_json,
    edit_text,
    plan,
    revert,
    write_atomic,
)
from rbd.daemon.errors import ConfigError, TuneConflict, TuneRejected
from tests.conftest import make_crate

CONFIG = ".cargo/config.toml"
TARGET = ("target", "x86_64-unknown-linux-gnu", "rustflags")

MANIFEST = """\
# top comment
[package]
name = 'demo'   # trailing
version = "0.1.0"
edition = "2021"

# dev profile: quick builds
[profile.dev]
debug = 2  # full

# the release profile
[profile.release]
lto = true
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def sets(*pairs: tuple[tuple[str, ...], Any], file: str = "Cargo.toml") -> Change:
    return Change(file, set=tuple(pairs))


def flags(key: tuple[str, ...], *add: str) -> Change:
    return Change(CONFIG, rustflags=(key, add))


def test_replacing_a_value_keeps_its_comment_and_everything_else() -> None:
    out = edit_text(MANIFEST, [sets((("profile", "dev", "debug"), "line-tables-only"))])
    assert out == MANIFEST.replace("debug = 2  # full", 'debug = "line-tables-only"  # full')


def test_a_new_key_goes_below_the_tables_last_key_not_below_the_next_sections_comment() -> None:
    out = edit_text(MANIFEST, [sets((("profile", "dev", "incremental"), True))])
    assert out == MANIFEST.replace("# full\n", "# full\nincremental = true\n")


def test_a_missing_table_is_a_new_section_at_the_end() -> None:
    change = sets(
        (("profile", "dev", "package", "*", "debug"), False),
        (("profile", "dev", "package", "*", "opt-level"), 1),
    )
    out = edit_text(MANIFEST, [change])
    assert out == MANIFEST + '\n[profile.dev.package."*"]\ndebug = false\nopt-level = 1\n'
    assert tomllib.loads(out)["profile"]["dev"] == {
        "debug": 2,
        "package": {"*": {"debug": False, "opt-level": 1}},
    }
    # A later key for [profile.dev] still goes into [profile.dev], not the new section.
    again = edit_text(out, [sets((("profile", "dev", "split-debuginfo"), "unpacked"))])
    assert again == out.replace("# full\n", '# full\nsplit-debuginfo = "unpacked"\n')


def test_indentation_and_a_missing_final_newline_are_handled() -> None:
    text = "[profile.dev]\n  debug = 2\n  # note\n\n[x]\ny = 1"
    out = edit_text(text, [sets((("profile", "dev", "opt-level"), 1))])
    assert out == "[profile.dev]\n  debug = 2\n  opt-level = 1\n  # note\n\n[x]\ny = 1"
    out = edit_text("[x]\ny = 1", [sets((("profile", "dev", "debug"), 1))])
    assert out == "[x]\ny = 1\n\n[profile.dev]\ndebug = 1\n"


def test_keys_go_above_a_sub_table() -> None:
    text = "[profile.dev]\ndebug = 1\n\n[profile.dev.package.foo]\nx = 1\n"
    out = edit_text(text, [sets((("profile", "dev", "opt-level"), 1))])
    assert out == text.replace("debug = 1\n", "debug = 1\nopt-level = 1\n")


@pytest.mark.parametrize(
    ("text", "path", "value", "expected"),
    [
        ("[profile]\ndev = { debug = 2 }  # inline\n", ("debug",), 1, "{ debug = 1 }  # inline"),
        ("[profile]\ndev = { debug = 2 }\n", ("opt-level",), 1, "{ debug = 2, opt-level = 1 }"),
        ("[profile]\ndev = {debug=2}\n", ("opt-level",), 1, "{debug=2,opt-level=1}"),
        (
            "[profile]\ndev = { debug = 2 }\n",
            ("package", "*", "debug"),
            False,
            '{ debug = 2, package = { "*" = { debug = false } } }',
        ),
    ],
)
def test_inline_tables_are_edited_in_place(
    text: str, path: tuple[str, ...], value: Any, expected: str
) -> None:
    out = edit_text(text, [sets((("profile", "dev", *path), value))])
    assert out == f"[profile]\ndev = {expected}\n"


def test_dotted_keys_stay_dotted() -> None:
    text = "[profile]\ndev.debug = 2\n\n[other]\nx = 1\n"
    out = edit_text(text, [sets((("profile", "dev", "opt-level"), 1))])
    assert out == text.replace("dev.debug = 2\n", "dev.debug = 2\ndev.opt-level = 1\n")


def test_a_replaced_string_keeps_its_quotes_and_an_all_literal_file_gets_literal_ones() -> None:
    text = "[profile.dev]\ndebug = 'full'\n"
    out = edit_text(text, [sets((("profile", "dev", "debug"), "limited"))])
    assert out == "[profile.dev]\ndebug = 'limited'\n"
    out = edit_text(text, [sets((("profile", "dev", "split-debuginfo"), "packed"))])
    assert out == "[profile.dev]\ndebug = 'full'\nsplit-debuginfo = 'packed'\n"


def test_crlf_line_endings_are_kept() -> None:
    text = "[profile.dev]\r\ndebug = 2\r\n"
    out = edit_text(text, [sets((("profile", "release", "debug"), 1))])
    assert out == "[profile.dev]\r\ndebug = 2\r\n\r\n[profile.release]\r\ndebug = 1\r\n"


MULTILINE = """\
[build]
rustflags = [
    # the linker
    "-C", "link-arg=-fuse-ld=lld",  # fast
    "-Ctarget-cpu=native",
]
"""


def test_rustflags_are_appended_to_a_multi_line_array_keeping_its_comments() -> None:
    out = edit_text(MULTILINE, [flags(("build", "rustflags"), "-C", "link-arg=-fuse-ld=mold")])
    assert out == MULTILINE.replace(
        '"-Ctarget-cpu=native",\n',
        '"-Ctarget-cpu=native",\n    "-C",\n    "link-arg=-fuse-ld=mold",\n',
    )


@pytest.mark.parametrize(
    "add",
    [
        ("-C", "target-cpu=native"),
        ("-Ctarget-cpu=native",),
        ("--codegen", "target-cpu=native"),
        ("-C", "link-arg=-fuse-ld=lld", "-Ctarget-cpu=native"),
    ],
)
def test_rustflags_already_there_in_any_spelling_add_nothing(add: tuple[str, ...]) -> None:
    assert edit_text(MULTILINE, [flags(("build", "rustflags"), *add)]) == MULTILINE


def test_string_rustflags_stay_a_string_in_their_quotes() -> None:
    text = "[build]\nrustflags = '-Ctarget-cpu=native'  # mine\n"
    change = flags(("build", "rustflags"), "-C", "link-arg=-fuse-ld=mold", "-Ctarget-cpu=native")
    out = edit_text(text, [change])
    assert out == "[build]\nrustflags = '-Ctarget-cpu=native -C link-arg=-fuse-ld=mold'  # mine\n"
    assert edit_text(out, [change]) == out


@pytest.mark.parametrize(
    "text",
    [
        '[build]\nrustflags = "-Clink-arg=-fuse-ld=mold"\n',
        '[build]\nrustflags = "-C  link-arg=-fuse-ld=mold -Ctarget-cpu=native"\n',
        '[build]\nrustflags = ["-C", "link-arg=-fuse-ld=mold"]\n',
        '[build]\nrustflags = ["-Clink-arg=-fuse-ld=mold"]\n',
    ],
)
def test_a_flag_pair_already_there_in_a_string_or_array_adds_nothing(text: str) -> None:
    change = flags(("build", "rustflags"), "-C", "link-arg=-fuse-ld=mold")
    assert edit_text(text, [change]) == text


def test_inline_rustflags_array_gets_the_flags_in_its_quotes_without_duplicates() -> None:
    text = "[build]\nrustflags = ['-C', 'link-arg=-fuse-ld=mold']\n"
    change = flags(("build", "rustflags"), "-C", "link-arg=-fuse-ld=mold", "-Zshare-generics=y")
    out = edit_text(text, [change])
    assert out == "[build]\nrustflags = ['-C', 'link-arg=-fuse-ld=mold', '-Zshare-generics=y']\n"


def test_rustflags_in_a_new_file() -> None:
    out = edit_text("", [flags(TARGET, "-C", "link-arg=-fuse-ld=mold")])
    assert out == (
        '[target.x86_64-unknown-linux-gnu]\nrustflags = ["-C", "link-arg=-fuse-ld=mold"]\n'
    )


def test_removing_what_was_added_gives_back_the_original_text() -> None:
    added = edit_text(MANIFEST, [sets((("profile", "dev", "package", "*", "debug"), False))])
    key = ("profile", "dev", "package", "*", "debug")
    removed = edit_text(added, [Change("Cargo.toml", remove=(key,))])
    assert removed == MANIFEST


def test_remove() -> None:
    absent = Change("Cargo.toml", remove=(("profile", "test", "debug"), ("profile", "dev", "x")))
    assert edit_text(MANIFEST, [absent]) == MANIFEST
    out = edit_text(MANIFEST, [Change("Cargo.toml", remove=(("profile", "release", "lto"),))])
    assert out == MANIFEST.removesuffix("[profile.release]\nlto = true\n")
    # A table's own comments are kept, and with them the table.
    text = "[profile.dev]  # notes\ndebug = 1\n"
    assert edit_text(text, [Change("Cargo.toml", remove=(("profile", "dev", "debug"),))]) == (
        "[profile.dev]  # notes\n"
    )
    text = '[package]\nname = "x"\n\n[profile]\ndev = { debug = 2, opt-level = 1 }\n'
    out = edit_text(text, [Change("Cargo.toml", remove=(("profile", "dev", "debug"),))])
    assert out == text.replace("debug = 2, ", "")
    out = edit_text(out, [Change("Cargo.toml", remove=(("profile", "dev", "opt-level"),))])
    assert out == '[package]\nname = "x"\n'


@pytest.mark.parametrize(
    ("text", "change"),
    [
        ("[profile.dev\n", sets((("profile", "dev", "debug"), 1))),
        ("[profile]\ndev = 1\n", sets((("profile", "dev", "debug"), 1))),
        ("[profile.dev.package.x]\n", sets((("profile", "dev", "package"), 1))),
        ("[build]\nrustflags = 3\n", flags(("build", "rustflags"), "-Cx")),
        ("", sets((("profile", "dev", "debug"), 1.5))),
    ],
)
def test_edits_that_cannot_be_made_are_config_errors(text: str, change: Change) -> None:
    with pytest.raises(ConfigError):
        edit_text(text, [change])


def test_json_round_trip() -> None:
    data = {
        "file": CONFIG,
        "set": [{"key": ["profile", "dev", "debug"], "value": "line-tables-only"}],
        "remove": [["profile", "dev", "opt-level"]],
        "rustflags": {"key": list(TARGET), "add": ["-C", "link-arg=-fuse-ld=mold"]},
    }
    change = change_from_json(data)
    assert change == Change(
        CONFIG,
        set=((("profile", "dev", "debug"), "line-tables-only"),),
        remove=(("profile", "dev", "opt-level"),),
        rustflags=(TARGET, ("-C", "link-arg=-fuse-ld=mold")),
    )
    assert change_to_json(change) == data
    assert change_from_json({"file": "Cargo.toml"}) == Change("Cargo.toml")


KEY = ["profile", "dev", "debug"]


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {},
        {"file": "../x"},
        {"file": "../Cargo.toml"},
        {"file": "/etc/passwd"},
        {"file": "./Cargo.toml"},
        {"file": ".cargo/../Cargo.toml"},
        {"file": "rbd.toml"},
        {"file": 3},
        {"file": "Cargo.toml", "extra": 1},
        {"file": "Cargo.toml", "set": {"key": KEY, "value": 1}},
        {"file": "Cargo.toml", "set": [{"key": KEY}]},
        {"file": "Cargo.toml", "set": [{"key": KEY, "value": 1, "x": 2}]},
        {"file": "Cargo.toml", "set": [{"key": "profile.dev.debug", "value": 1}]},
        {"file": "Cargo.toml", "set": [{"key": ["profile"], "value": 1}]},
        {"file": "Cargo.toml", "set": [{"key": ["profile", 3], "value": 1}]},
        {"file": "Cargo.toml", "set": [{"key": ["profile", ""], "value": 1}]},
        {"file": "Cargo.toml", "set": [{"key": ["profile", "a\nb"], "value": 1}]},
        {"file": "Cargo.toml", "set": [{"key": KEY, "value": 1.5}]},
        {"file": "Cargo.toml", "set": [{"key": KEY, "value": None}]},
        {"file": "Cargo.toml", "set": [{"key": KEY, "value": [1]}]},
        {"file": "Cargo.toml", "set": [{"key": KEY, "value": 2**64}]},
        {"file": "Cargo.toml", "remove": [KEY, "x"]},
        {"file": "Cargo.toml", "remove": "x"},
        {"file": CONFIG, "rustflags": {"key": ["build", "rustflags"]}},
        {"file": CONFIG, "rustflags": {"key": ["build", "rustflags"], "add": []}},
        {"file": CONFIG, "rustflags": {"key": ["build", "rustflags"], "add": ["-C x"]}},
        {"file": CONFIG, "rustflags": {"key": ["build", "rustflags"], "add": [3]}},
        {"file": CONFIG, "rustflags": {"key": ["build", "linker"], "add": ["-Cx"]}},
        {"file": CONFIG, "rustflags": ["-Cx"]},
    ],
)
def test_change_from_json_rejects_malformed_input(data: Any) -> None:
    with pytest.raises(ConfigError):
        change_from_json(data)


def test_plan_groups_by_file_and_leaves_out_edits_that_change_nothing(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "demo")
    manifest = (root / "Cargo.toml").read_bytes()
    edits = plan(
        root,
        [
            sets((("profile", "dev", "debug"), 1)),
            flags(TARGET, "-C", "link-arg=-fuse-ld=mold"),
            sets((("profile", "dev", "opt-level"), 1)),
            Change("Cargo.toml", remove=(("profile", "test", "debug"),)),
        ],
    )
    assert [e.path for e in edits] == [root / "Cargo.toml", root / CONFIG]
    assert edits[0].before == manifest
    assert edits[0].after == manifest + b"\n[profile.dev]\ndebug = 1\nopt-level = 1\n"
    assert edits[0].diff.startswith("--- a/Cargo.toml\n+++ b/Cargo.toml\n")
    assert "+[profile.dev]\n+debug = 1\n+opt-level = 1\n" in edits[0].diff
    assert edits[1].before is None and edits[1].diff.startswith("--- a/.cargo/config.toml\n")
    assert not (root / CONFIG).exists(), "plan writes nothing"
    assert plan(root, [Change("Cargo.toml", remove=(("profile", "dev", "debug"),))]) == []
    (root / ".cargo" / "config").parent.mkdir()
    (root / ".cargo" / "config").write_text("")
    with pytest.raises(ConfigError, match=r"older \.cargo/config"):
        plan(root, [flags(TARGET, "-Cx")])


def test_write_atomic_keeps_the_mode_and_symlinks_and_creates_dirs(tmp_path: Path) -> None:
    path = tmp_path / "Cargo.toml"
    path.write_bytes(b"old")
    path.chmod(0o640)
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and stat.S_IMODE(path.stat().st_mode) == 0o640
    link = tmp_path / "link.toml"
    link.symlink_to(path)
    write_atomic(link, b"newer")
    assert link.is_symlink() and path.read_bytes() == b"newer"
    umask = os.umask(0o027)
    try:
        write_atomic(tmp_path / ".cargo" / "config.toml", b"x")
    finally:
        os.umask(umask)
    new = tmp_path / ".cargo" / "config.toml"
    assert new.read_bytes() == b"x" and stat.S_IMODE(new.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path)) == [".cargo", "Cargo.toml", "link.toml"]


def edited(root: Path, change: Change) -> FileEdit:
    [edit] = plan(root, [change])
    write_atomic(edit.path, edit.after)
    return edit


def test_revert_restores_the_exact_bytes(tmp_path: Path) -> None:
    # No final newline, CRLF, trailing spaces: nothing tomlkit would write on its own.
    original = b"[package]\r\nname = 'demo'  \r\nversion = \"0.1.0\"\r\n\r\n# end"
    root = make_crate(tmp_path / "demo")
    (root / "Cargo.toml").write_bytes(original)
    edit = edited(root, sets((("profile", "dev", "debug"), 0)))
    revert(edit)
    assert (root / "Cargo.toml").read_bytes() == original
    revert(edit)  # already reverted: nothing to do
    assert (root / "Cargo.toml").read_bytes() == original


def test_revert_of_a_created_file_deletes_it_and_its_dir(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "demo")
    edit = edited(root, flags(TARGET, "-C", "link-arg=-fuse-ld=mold"))
    assert edit.before is None and (root / CONFIG).exists()
    revert(edit)
    assert not (root / ".cargo").exists()


def test_revert_after_a_user_edit_is_a_conflict_unless_forced(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "demo")
    original = (root / "Cargo.toml").read_bytes()
    edit = edited(root, sets((("profile", "dev", "debug"), 0)))
    users = edit.after + b"# mine\n"
    (root / "Cargo.toml").write_bytes(users)
    with pytest.raises(TuneConflict, match=r"Cargo\.toml.*--force"):
        revert(edit)
    assert (root / "Cargo.toml").read_bytes() == users
    revert(edit, force=True)
    assert (root / "Cargo.toml").read_bytes() == original


@pytest.mark.anyio
async def test_apply_writes_what_cargo_accepts(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "demo")
    changes = [
        sets((("profile", "dev", "package", "*", "debug"), False)),
        flags(TARGET, "-C", "target-cpu=native"),
        sets(
            (("profile", "fast", "inherits"), "dev"),
            (("profile", "fast", "debug"), 0),
            file=CONFIG,
        ),
    ]
    edits = await apply(root, dict(os.environ), changes)
    assert [e.path.read_bytes() for e in edits] == [e.after for e in edits]
    assert tomllib.loads((root / CONFIG).read_text()) == {
        "target": {"x86_64-unknown-linux-gnu": {"rustflags": ["-C", "target-cpu=native"]}},
        "profile": {"fast": {"inherits": "dev", "debug": 0}},
    }


@pytest.mark.anyio
async def test_a_cranelift_profile_is_accepted_and_stable_builds_keep_working(
    tmp_path: Path,
) -> None:
    root = make_crate(tmp_path / "demo")
    change = sets(
        (("profile", "cranelift", "inherits"), "dev"),
        (("profile", "cranelift", "codegen-backend"), "cranelift"),
        file=CONFIG,
    )
    await apply(root, dict(os.environ), [change])
    assert 'codegen-backend = "cranelift"' in (root / CONFIG).read_text()
    built = subprocess.run(["cargo", "build"], cwd=root, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr


@pytest.mark.anyio
async def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "demo")
    before = (root / "Cargo.toml").read_bytes()
    edits = await apply(
        root,
        dict(os.environ),
        [sets((("profile", "dev", "debug"), "bogus")), flags(TARGET, "-Cx")],
        dry_run=True,
    )
    assert len(edits) == 2
    assert (root / "Cargo.toml").read_bytes() == before and not (root / ".cargo").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (sets((("profile", "dev", "debug"), "bogus")), "bogus"),
        (sets((("profile", "release", "debug"), "bogus"), file=CONFIG), "profile.release"),
        (sets((("profile", "dev", "package", "*", "debug"), "bogus"), file=CONFIG), "bogus"),
        (flags(("build", "rustflags"), "-C", "no-such-option=1"), "no-such-option"),
        (
            sets(
                (("profile", "custom", "inherits"), "dev"),
                (("profile", "custom", "debug"), "bogus"),
                file=CONFIG,
            ),
            "profile.custom",
        ),
        (sets((("profile", "custom", "debug"), 1), file=CONFIG), "inherits"),
    ],
)
@pytest.mark.anyio
async def test_a_change_cargo_rejects_is_rolled_back(
    tmp_path: Path, change: Change, message: str
) -> None:
    root = make_crate(tmp_path / "demo")
    # Both files exist, are rewritten, and must come back byte for byte.
    config = b"[build]\n# mine\nincremental = true"
    (root / ".cargo").mkdir()
    (root / CONFIG).write_bytes(config)
    manifest = (root / "Cargo.toml").read_bytes()
    other_file = "Cargo.toml" if change.file == CONFIG else CONFIG
    other = sets((("profile", "dev", "opt-level"), 1), file=other_file)
    with pytest.raises(TuneRejected, match=message) as raised:
        await apply(root, dict(os.environ), [other, change])
    assert "even without" not in str(raised.value)
    assert (root / "Cargo.toml").read_bytes() == manifest
    assert (root / CONFIG).read_bytes() == config
    assert sorted(os.listdir(root / ".cargo")) == ["config.toml"]


@pytest.mark.anyio
async def test_a_created_config_is_deleted_on_rollback(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "demo")
    with pytest.raises(TuneRejected):
        await apply(root, dict(os.environ), [flags(TARGET, "-C", "no-such-option=1")])
    assert not (root / ".cargo").exists()


@pytest.mark.anyio
async def test_a_project_cargo_already_rejects_says_so(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "demo", files={CONFIG: '[profile.dev]\ndebug = "bogus"\n'})
    with pytest.raises(TuneRejected, match="even without the change"):
        await apply(root, dict(os.environ), [sets((("profile", "dev", "opt-level"), 1))])
    assert (root / "Cargo.toml").read_text().count("profile") == 0


@pytest.mark.anyio
async def test_a_cargo_without_cleans_flags_gets_the_metadata_check(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "cargo"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1" = clean ]; then\n'
        "  echo \"error: unexpected argument '--workspace' found\" >&2; exit 1\n"
        "fi\n"
        f'exec {shutil.which("cargo")} "$@"\n'
    )
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    root = make_crate(tmp_path / "demo")
    with pytest.raises(TuneRejected, match="bogus"):
        await apply(root, env, [sets((("profile", "dev", "debug"), "bogus"))])
    # What only the clean check sees now passes.
    await apply(root, env, [sets((("profile", "dev", "debug"), "bogus"), file=CONFIG)])
