"""Probing the toolchain and the effective build settings: against the installed
toolchain, stand-in `rustup`/`mold`/`rustc` scripts first on PATH, and real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from rbd.daemon.advice import probe as probe_module
from rbd.daemon.advice.probe import (
    default_linker,
    effective_profile,
    effective_rustflags,
    normalize_debug,
    probe,
    rust_analyzer_settings,
    strip_jsonc,
)
from rbd.daemon.build import cargo_config
from tests.conftest import make_crate

HOST = "x86_64-unknown-linux-gnu"
KEYS = {
    "cargo_version", "rustc_version", "channel", "host", "default_linker", "linkers", "rustup",
    "nightly", "sccache", "rustc_wrapper", "profile", "linker", "rustflags", "rustflags_source",
    "env", "rust_analyzer",
}  # fmt: skip


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def script(bin_dir: Path, name: str, body: str) -> Path:
    path = bin_dir / name
    write(path, "#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def isolated(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The real environment without the user's cargo settings (a CARGO_HOME of its own)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARGO", "RUSTFLAGS"))}
    env = {k: v for k, v in env.items() if k not in ("RUSTC_WRAPPER", "RUSTDOCFLAGS")}
    return {**env, "CARGO_HOME": str(tmp_path / "cargo-home"), **extra}


def with_bin(env: dict[str, str], bin_dir: Path, rest: str | None = None) -> dict[str, str]:
    """env with bin_dir first on PATH, followed by rest (default: the real PATH)."""
    tail = env.get("PATH", "") if rest is None else rest
    return {**env, "PATH": f"{bin_dir}:{tail}" if tail else str(bin_dir)}


@pytest.mark.anyio
async def test_the_installed_toolchain(tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "demo")
    env = isolated(tmp_path)
    found = await probe(crate, env)
    assert found.keys() >= KEYS
    json.dumps(found)  # the client prints it as it is
    own = subprocess.run(["rustc", "-vV"], cwd=crate, env=env, capture_output=True, text=True)
    fields = dict(line.split(": ", 1) for line in own.stdout.splitlines() if ": " in line)
    assert found["host"] == fields["host"]
    assert found["rustc_version"] == fields["release"].split("-")[0]
    assert found["cargo_version"] is not None
    assert found["channel"] in ("stable", "beta", "nightly")
    assert found["default_linker"] == default_linker(found["host"], found["rustc_version"])
    assert found["linkers"]["mold"] == shutil.which("mold", path=env["PATH"])
    assert found["rustup"] == shutil.which("rustup", path=env["PATH"])
    # A nightly may or may not be installed here: only its shape is certain.
    toolchain = found["nightly"]["toolchain"]
    assert toolchain is None or toolchain.startswith("nightly")
    assert isinstance(found["nightly"]["cranelift"], bool)
    assert found["profile"]["debug"] == 2 and found["profile"]["sources"]["debug"] == "default"
    assert found["linker"] is None and found["rustflags"] == []
    assert found["rust_analyzer"] == {"target_dir": None, "shares_target_dir": None, "source": None}


FAKE_RUSTUP = """\
    case "$1 $2" in
      "toolchain list") printf '%s\\n' "stable-{host} (active, default)" {toolchains} ;;
      "component list") [ "$4" = "nightly-{host}" ] && printf '%s\\n' {components} ;;
    esac
    """


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("toolchains", "components", "expected"),
    [
        ("nightly-{host}", "rustc-codegen-cranelift-preview-{host}", ("nightly-{host}", True)),
        ("nightly-{host}", "cargo-{host} rust-std-{host}", ("nightly-{host}", False)),
        ("beta-{host}", "rustc-codegen-cranelift-preview-{host}", (None, False)),
    ],
)
async def test_a_nightly_with_cranelift_is_found_through_rustup(
    tmp_path: Path, toolchains: str, components: str, expected: tuple[str | None, bool]
) -> None:
    bin_dir = tmp_path / "bin"
    body = FAKE_RUSTUP.format(host=HOST, toolchains=toolchains, components=components)
    rustup = script(bin_dir, "rustup", body.format(host=HOST))
    found = await probe(make_crate(tmp_path / "demo"), with_bin(isolated(tmp_path), bin_dir))
    assert found["rustup"] == str(rustup)
    toolchain, cranelift = expected
    assert found["nightly"] == {
        "toolchain": toolchain and toolchain.format(host=HOST),
        "cranelift": cranelift,
    }
    assert found["rustc_version"] is not None  # rustc, a proxy of the real rustup, still runs


@pytest.mark.anyio
async def test_linkers_come_from_the_builds_path(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    crate = make_crate(tmp_path / "demo")
    env = isolated(tmp_path)
    cargo = shutil.which("cargo", path=env["PATH"])
    assert cargo is not None
    # Only the toolchain's own dir after bin_dir: no mold there.
    toolchain_only = with_bin(env, bin_dir, str(Path(cargo).parent))
    assert shutil.which("mold", path=toolchain_only["PATH"]) is None
    found = await probe(crate, toolchain_only)
    assert found["linkers"]["mold"] is None and found["cargo_version"] is not None
    mold = script(bin_dir, "mold", "exit 0\n")
    found = await probe(crate, toolchain_only)
    assert found["linkers"]["mold"] == str(mold)


@pytest.mark.anyio
async def test_no_toolchain_at_all_gives_nulls(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {"PATH": str(empty), "HOME": str(tmp_path), "CARGO_HOME": str(tmp_path / "h")}
    found = await probe(make_crate(tmp_path / "demo"), env)
    for key in ("cargo_version", "rustc_version", "channel", "host", "default_linker", "rustup"):
        assert found[key] is None, key
    assert found["nightly"] == {"toolchain": None, "cranelift": False}
    assert set(found["linkers"].values()) == {None}
    assert found["profile"]["opt_level"] == 0
    assert found["env"] == {"CARGO_HOME": str(tmp_path / "h")}


@pytest.mark.anyio
async def test_tools_run_in_the_root_with_the_builds_environment(tmp_path: Path) -> None:
    # A rust-toolchain file applies because rustc runs in the root: stand-ins
    # that answer from a file there (and from the environment) show it.
    bin_dir = tmp_path / "bin"
    script(bin_dir, "rustc", "cat rustc-vV.txt\n")
    script(bin_dir, "cargo", 'echo "cargo $FAKE_CARGO_VERSION (f2d3ce0bd 2025-01-01)"\n')
    crate = make_crate(tmp_path / "demo")
    write(crate / "rustc-vV.txt", f"rustc 1.89.0-beta.3\nrelease: 1.89.0-beta.3\nhost: {HOST}\n")
    env = with_bin(isolated(tmp_path, FAKE_CARGO_VERSION="1.89.0-beta.3"), bin_dir)
    found = await probe(crate, env)
    assert (found["rustc_version"], found["cargo_version"]) == ("1.89.0", "1.89.0")
    assert found["channel"] == "beta" and found["host"] == HOST
    assert found["default_linker"] == "cc"  # rust-lld by default only from 1.90
    script(bin_dir, "rustc", "echo broken >&2; exit 1\n")
    with capture_logs() as logs:
        found = await probe(crate, env)
    assert found["rustc_version"] is None and found["host"] is None
    assert any(e["event"] == "probe_tool_failed" and "broken" in e["error"] for e in logs)


@pytest.mark.anyio
async def test_a_hanging_tool_is_given_up_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(probe_module, "PROBE_TIMEOUT_S", 0.3)
    bin_dir = tmp_path / "bin"
    script(bin_dir, "rustc", "exec sleep 60\n")  # a rustup proxy stuck on a lock
    with capture_logs() as logs:
        found = await probe(make_crate(tmp_path / "demo"), with_bin(isolated(tmp_path), bin_dir))
    assert found["rustc_version"] is None and found["cargo_version"] is not None
    assert any(e["event"] == "probe_tool_failed" and e["error"] == "timed out" for e in logs)


@pytest.mark.parametrize(
    ("host", "version", "expected"),
    [
        (HOST, "1.95.0", "rust-lld"),
        (HOST, "1.90.0", "rust-lld"),
        (HOST, "1.89.0", "cc"),
        ("aarch64-unknown-linux-gnu", "1.95.0", "cc"),
        ("aarch64-apple-darwin", "1.95.0", "cc"),
        (None, None, None),
    ],
)
def test_default_linker(host: str | None, version: str | None, expected: str | None) -> None:
    assert default_linker(host, version) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, 2), (False, 0), (0, 0), (1, 1), (2, 2), ("full", 2), ("limited", 1),
        ("none", 0), ("2", 2), ("line-tables-only", "line-tables-only"),
        ("line-directives-only", "line-directives-only"),
    ],
)  # fmt: skip
def test_normalize_debug(value: Any, expected: int | str) -> None:
    assert normalize_debug(value) == expected


def profile_of(root: Path, env: dict[str, str]) -> dict[str, Any]:
    return effective_profile(root, env, cargo_config.load(root, env))


def test_the_dev_profile_follows_cargos_precedence(tmp_path: Path) -> None:
    root = tmp_path / "ws" / "app"
    env = {"CARGO_HOME": str(tmp_path / "cargo-home")}
    manifest = str(root / "Cargo.toml")
    make_crate(root)
    with (root / "Cargo.toml").open("a") as f:
        f.write(
            '[profile.dev]\ndebug = 1\nopt-level = 1\n[profile.dev.package."*"]\ndebug = false\n'
        )
    profile = profile_of(root, env)
    assert (profile["debug"], profile["deps_debug"]) == (1, 0)
    assert (profile["opt_level"], profile["deps_opt_level"]) == (1, 1)
    assert profile["codegen_units"] == 256 and profile["incremental"] is True
    assert profile["split_debuginfo"] is None and profile["codegen_backend"] is None
    assert profile["sources"] == {
        "debug": manifest, "deps_debug": manifest, "opt_level": manifest,
        "deps_opt_level": manifest, "codegen_units": "default", "incremental": "default",
        "split_debuginfo": "default", "codegen_backend": "default",
    }  # fmt: skip

    # Config files override the manifest; the closer file overrides the farther.
    outer = tmp_path / "ws" / ".cargo" / "config.toml"
    inner = root / ".cargo" / "config.toml"
    write(outer, '[profile.dev]\ndebug = "full"\ncodegen-units = 16\nsplit-debuginfo = "packed"\n')
    write(inner, '[profile.dev]\ndebug = "line-tables-only"\nsplit-debuginfo = "unpacked"\n')
    home = Path(env["CARGO_HOME"]) / "config.toml"
    write(home, '[profile.dev.package."*"]\ndebug = "limited"\n')
    profile = profile_of(root, env)
    assert profile["debug"] == "line-tables-only" and profile["sources"]["debug"] == str(inner)
    assert profile["codegen_units"] == 16 and profile["sources"]["codegen_units"] == str(outer)
    assert profile["split_debuginfo"] == "unpacked"
    assert profile["deps_debug"] == 1
    assert profile["sources"]["deps_debug"] == str(home)

    # The environment overrides files, but not package."*" (cargo has no variable for it).
    env |= {
        "CARGO_PROFILE_DEV_DEBUG": "0",
        "CARGO_PROFILE_DEV_OPT_LEVEL": "s",
        "CARGO_PROFILE_DEV_CODEGEN_UNITS": "4",
        "CARGO_PROFILE_DEV_INCREMENTAL": "false",
    }
    profile = profile_of(root, env)
    assert (profile["debug"], profile["deps_debug"]) == (0, 1)
    assert (profile["opt_level"], profile["deps_opt_level"]) == ("s", "s")
    assert profile["sources"]["deps_opt_level"] == "CARGO_PROFILE_DEV_OPT_LEVEL"
    assert profile["codegen_units"] == 4 and profile["incremental"] is False
    assert profile["sources"]["incremental"] == "CARGO_PROFILE_DEV_INCREMENTAL"
    # CARGO_INCREMENTAL overrides every profile.
    profile = profile_of(root, {**env, "CARGO_INCREMENTAL": "1"})
    assert profile["incremental"] is True
    assert profile["sources"]["incremental"] == "CARGO_INCREMENTAL"


def test_a_broken_manifest_leaves_the_defaults_with_a_warning(tmp_path: Path) -> None:
    write(tmp_path / "Cargo.toml", "[profile.dev\n")
    with capture_logs() as logs:
        profile = profile_of(tmp_path, {"CARGO_HOME": str(tmp_path / "h")})
    assert profile["debug"] == 2 and profile["sources"]["debug"] == "default"
    assert [e["event"] for e in logs] == ["probe_file_unreadable"]


def rustflags_of(root: Path, env: dict[str, str]) -> tuple[list[str], str | None, list[str]]:
    return effective_rustflags(HOST, env, cargo_config.load(root, env))


def test_rustflags_follow_cargos_precedence(tmp_path: Path) -> None:
    root = tmp_path / "ws" / "app"
    root.mkdir(parents=True)
    env = {"CARGO_HOME": str(tmp_path / "cargo-home")}
    outer = tmp_path / "ws" / ".cargo" / "config.toml"
    inner = root / ".cargo" / "config.toml"
    assert rustflags_of(root, env) == ([], None, [])

    write(outer, '[build]\nrustflags = "-C debuginfo=1  -C opt-level=0"\n')
    assert rustflags_of(root, env) == (
        ["-C", "debuginfo=1", "-C", "opt-level=0"],
        "build.rustflags",
        [str(outer)],
    )
    # The host's target table wins over build; arrays from several files are joined,
    # the farther file first, and the variable's flags come last.
    write(outer, f'[build]\nrustflags = ["-Cb"]\n[target.{HOST}]\nrustflags = ["-Ca"]\n')
    write(inner, f'[target.{HOST}]\nrustflags = ["-Cb", "-Cc"]\n')
    var = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS"
    assert rustflags_of(root, {**env, var: "-Cd"}) == (
        ["-Ca", "-Cb", "-Cc", "-Cd"],
        f"target.{HOST}.rustflags",
        [str(outer), str(inner), var],
    )
    # RUSTFLAGS replaces all of that; CARGO_ENCODED_RUSTFLAGS replaces RUSTFLAGS.
    env["RUSTFLAGS"] = " -C  link-arg=-fuse-ld=mold "
    assert rustflags_of(root, env) == (["-C", "link-arg=-fuse-ld=mold"], "RUSTFLAGS", ["RUSTFLAGS"])
    env["CARGO_ENCODED_RUSTFLAGS"] = "-C\x1fdebuginfo=line tables"
    flags, source, _ = rustflags_of(root, env)
    assert (flags, source) == (["-C", "debuginfo=line tables"], "CARGO_ENCODED_RUSTFLAGS")
    env["CARGO_ENCODED_RUSTFLAGS"] = ""  # set but empty: no flags, and RUSTFLAGS is ignored
    assert rustflags_of(root, env)[:2] == ([], "CARGO_ENCODED_RUSTFLAGS")


@pytest.mark.anyio
async def test_the_configured_linker_and_wrapper(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    crate = make_crate(tmp_path / "demo")
    env = isolated(tmp_path, PATH=str(empty))
    config = crate / ".cargo" / "config.toml"
    write(config, '[build]\nrustc-wrapper = "sccache"\n')
    found = await probe(crate, env)
    assert found["host"] is None and found["linker"] is None  # no rustc: no host to look up
    assert found["rustc_wrapper"] == "sccache"

    env = isolated(tmp_path)
    write(config, f'[target.{HOST}]\nlinker = "tools/cc"\nrustflags = ["-Cforce-frame-pointers"]\n')
    found = await probe(crate, env)
    if found["host"] != HOST:
        pytest.skip(f"the installed rustc is for {found['host']}")
    assert (found["linker"], found["linker_source"]) == (str(crate / "tools" / "cc"), str(config))
    assert found["rustflags"] == ["-Cforce-frame-pointers"]
    assert found["rustflags_source"] == f"target.{HOST}.rustflags"
    var = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER"
    found = await probe(crate, {**env, var: "clang", "RUSTFLAGS": ""})
    assert (found["linker"], found["linker_source"]) == ("clang", var)
    assert (found["rustflags"], found["rustflags_source"]) == ([], "RUSTFLAGS")
    assert found["env"][var] == "clang" and "HOME" not in found["env"]


def test_strip_jsonc_keeps_strings_and_drops_comments_and_trailing_commas() -> None:
    text = """{
      // a "comment", with a comma,
      "url": "https://example.com/*not a comment*/", /* block, comment */
      "list": [1, 2, /* last */ ],
      "quote": "a \\" // still a string",
    }"""
    assert json.loads(strip_jsonc(text)) == {
        "url": "https://example.com/*not a comment*/",
        "list": [1, 2],
        "quote": 'a " // still a string',
    }


def test_rust_analyzer_target_dir(tmp_path: Path) -> None:
    vscode = tmp_path / ".vscode" / "settings.json"
    assert rust_analyzer_settings(tmp_path) == {
        "target_dir": None, "shares_target_dir": None, "source": None
    }  # fmt: skip
    write(vscode, '{\n  // rust\n  "editor.formatOnSave": true, /* x */\n}\n')
    assert rust_analyzer_settings(tmp_path) == {
        "target_dir": None, "shares_target_dir": True, "source": str(vscode)
    }  # fmt: skip
    write(vscode, '{\n  "rust-analyzer.cargo.targetDir": true, // its own dir\n}\n')
    found = rust_analyzer_settings(tmp_path)
    assert (found["target_dir"], found["shares_target_dir"]) == (True, False)
    write(vscode, '{"rust-analyzer.cargo.targetDir": false}')
    assert rust_analyzer_settings(tmp_path)["shares_target_dir"] is True

    ratoml = tmp_path / "rust-analyzer.toml"
    write(ratoml, '[cargo]\ntargetDir = "target/ra"\n')
    assert rust_analyzer_settings(tmp_path) == {
        "target_dir": "target/ra", "shares_target_dir": False, "source": str(ratoml)
    }  # fmt: skip


def test_unreadable_rust_analyzer_settings_are_tolerated(tmp_path: Path) -> None:
    write(tmp_path / ".vscode" / "settings.json", '{"rust-analyzer.cargo.targetDir": tru')
    with capture_logs() as logs:
        found = rust_analyzer_settings(tmp_path)
    assert found == {"target_dir": None, "shares_target_dir": None, "source": None}
    assert [e["event"] for e in logs] == ["probe_file_unreadable"]
    ratoml = tmp_path / "rust-analyzer.toml"
    write(ratoml, "[check]\ncommand = 'clippy'\n")
    found = rust_analyzer_settings(tmp_path)
    assert found == {"target_dir": None, "shares_target_dir": True, "source": str(ratoml)}


@pytest.mark.anyio
async def test_the_tools_are_asked_once_per_toolchain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`suggest` spent 30 of its 31 ms asking cargo, rustc and rustup: asked again only
    when what decides the toolchain changes (here: a rust-toolchain.toml appears)."""
    crate = make_crate(tmp_path / "p", "p")
    asked: list[list[str]] = []
    real = probe_module._run

    async def counting(argv: list[str], root: Path, env: dict[str, str]) -> str:
        asked.append(argv)
        return await real(argv, root, env)

    monkeypatch.setattr(probe_module, "_run", counting)
    monkeypatch.setattr(probe_module, "_ASKED", {})
    env = dict(os.environ)
    first = await probe_module.probe(crate, env)
    count = len(asked)
    assert count >= 2 and first["rustc_version"]
    second = await probe_module.probe(crate, env)
    assert len(asked) == count, "asked the tools again with nothing changed"
    assert second == first
    (crate / "rust-toolchain.toml").write_text('[toolchain]\nchannel = "stable"\n')
    third = await probe_module.probe(crate, env)
    assert len(asked) == 2 * count
    assert third["rustc_version"] == first["rustc_version"]


@pytest.mark.parametrize(
    ("driver", "flags", "expected"),
    [
        (None, [], "rust-lld (rustc's default)"),
        ("/usr/bin/clang", ["-C", "link-arg=-fuse-ld=lld"], "clang + lld; set in C, F"),
        ("clang", [], "clang, no linker chosen (rustc's default here: rust-lld); set in C"),
        (None, ["-Clink-arg=-fuse-ld=bfd", "-Clink-arg=-fuse-ld=mold"], "mold; set in F"),
        (None, ["-Clinker=clang", "-Clink-arg=--ld-path=/opt/wild"], "clang + wild; set in F"),
    ],
)
def test_linker_in_effect(driver: str | None, flags: list[str], expected: str) -> None:
    """What the configuration asks to link with, and where it says so: the suggest
    header said "default linker rust-lld" for a project linking with clang + lld."""
    found = probe_module.linker_in_effect("rust-lld", driver, "C" if driver else None, flags, ["F"])
    assert found == expected
    assert probe_module.linker_in_effect(None, None, None, [], []) is None


@pytest.mark.anyio
async def test_a_project_config_naming_clang_and_lld_is_what_the_probe_reports(
    tmp_path: Path,
) -> None:
    crate = make_crate(tmp_path / "demo")
    write(
        crate / ".cargo" / "config.toml",
        f"""\
        [target.{HOST}]
        linker = "clang"
        rustflags = ["-C", "link-arg=-fuse-ld=lld"]
        """,
    )
    found = await probe(crate, isolated(tmp_path))
    if found["host"] != HOST:
        pytest.skip("the config names the x86_64 Linux target")
    config = str(crate / ".cargo" / "config.toml")
    assert found["linker_in_effect"] == f"clang + lld; set in {config}"
    assert found["default_linker"] == "rust-lld"  # still reported, no longer the header's


@pytest.mark.anyio
async def test_a_cached_probe_reads_the_cargo_config_anew_and_asks_again_on_a_new_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache holds only the tools' answers: a cargo config written anywhere in the
    hierarchy shows in the next probe without asking them again; another PATH asks again."""
    crate = make_crate(tmp_path / "work" / "p", "p")
    asked: list[list[str]] = []
    real = probe_module._run

    async def counting(argv: list[str], root: Path, env: dict[str, str]) -> str:
        asked.append(argv)
        return await real(argv, root, env)

    monkeypatch.setattr(probe_module, "_run", counting)
    monkeypatch.setattr(probe_module, "_ASKED", {})
    env = isolated(tmp_path)
    first = await probe_module.probe(crate, env)
    count = len(asked)
    assert count >= 2 and first["rustc_version"] and first["profile"]["debug"] != 1
    write(tmp_path / "work" / ".cargo" / "config.toml", "[profile.dev]\ndebug = 1\n")
    above = await probe_module.probe(crate, env)
    assert above["profile"]["debug"] == 1
    write(Path(env["CARGO_HOME"]) / "config.toml", '[build]\nrustc-wrapper = "sccache"\n')
    home = await probe_module.probe(crate, env)
    assert home["rustc_wrapper"] == "sccache" and home["profile"]["debug"] == 1
    assert len(asked) == count, "asked the tools again for a cargo config change"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    moved = await probe_module.probe(crate, with_bin(env, bin_dir))
    assert len(asked) == 2 * count
    assert moved["rustc_version"] == first["rustc_version"]
