"""The toolchain key (daemon.tools.toolchain_key): the probe, a build's conditions and
a measurement's freshness ask rustc, cargo and rustup once per key, so every change
that can change their answers must change it, and nothing else may.

Against real files: a RUSTUP_HOME of its own and stand-in rustc, cargo and rustup
scripts first on PATH (their contents are never run here, only looked at)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rbd.daemon.tools import toolchain_key
from tests.conftest import make_crate


class Toolchain:
    """A project, a RUSTUP_HOME with one toolchain and stand-in tools on PATH."""

    def __init__(self, base: Path) -> None:
        self.root = make_crate(base / "work" / "p", "p")
        self.home = base / "rustup"
        self.components = self.home / "toolchains" / "stable-x" / "lib" / "rustlib" / "components"
        self.components.parent.mkdir(parents=True)
        self.components.write_text("rustc-x\ncargo-x\n")
        (self.home / "settings.toml").write_text('default_toolchain = "stable-x"\n')
        (self.home / "update-hashes").mkdir()
        (self.home / "update-hashes" / "stable-x").write_text("abc\n")
        self.bin = base / "bin"
        self.bin.mkdir()
        for name in ("rustc", "cargo", "rustup"):
            self.tool(name, "#!/bin/sh\nexit 0\n")
        self.env = {"HOME": str(base), "RUSTUP_HOME": str(self.home), "PATH": str(self.bin)}

    def tool(self, name: str, text: str) -> None:
        path = self.bin / name
        path.write_text(text)
        path.chmod(0o755)

    def key(self, **env: str) -> tuple[object, ...]:
        return toolchain_key(self.root, {**self.env, **env}, "rustc")


@pytest.fixture
def chain(tmp_path: Path) -> Toolchain:
    return Toolchain(tmp_path)


def test_nothing_changed_is_the_same_key(chain: Toolchain) -> None:
    assert chain.key() == chain.key()


@pytest.mark.parametrize("name", ["rustc", "cargo", "rustup"])
def test_a_tool_replaced_on_path_changes_it(chain: Toolchain, name: str) -> None:
    """A rustup proxy or a toolchain's binary rewritten (`rustup self update`, a
    distribution's package update): another file under the same name."""
    before = chain.key()
    chain.tool(name, "#!/bin/sh\n# another build of the tool\nexit 0\n")
    assert chain.key() != before


@pytest.mark.parametrize("name", ["rustc", "cargo", "rustup"])
def test_a_tool_appearing_on_path_changes_it(tmp_path: Path, name: str) -> None:
    """A tool that was missing (the probe's answer then: none) is asked once it is there."""
    chain = Toolchain(tmp_path)
    (chain.bin / name).unlink()
    before = chain.key()
    chain.tool(name, "#!/bin/sh\nexit 0\n")
    assert chain.key() != before


def test_path_changes_it(chain: Toolchain, tmp_path: Path) -> None:
    other = tmp_path / "other-bin"
    other.mkdir()
    before = chain.key()
    assert chain.key(PATH=f"{other}:{chain.bin}") != before
    # The same tools found, but PATH decides where every other tool comes from too.
    assert chain.key(PATH=f"{chain.bin}:{other}") != before


@pytest.mark.parametrize(
    "variable", ["RUSTUP_TOOLCHAIN", "RUSTC", "CARGO_HOME", "RUSTUP_HOME"]
)  # fmt: skip
def test_the_variables_that_choose_a_toolchain_change_it(chain: Toolchain, variable: str) -> None:
    assert chain.key(**{variable: "/elsewhere/nightly"}) != chain.key()


def test_rustups_own_files_change_it(chain: Toolchain) -> None:
    """`rustup default`, `rustup component add`, `rustup update`, `rustup toolchain
    install`: each leaves one of these changed."""
    keys = [chain.key()]
    (chain.home / "settings.toml").write_text('default_toolchain = "nightly-x"\n')
    keys.append(chain.key())
    chain.components.write_text("rustc-x\ncargo-x\nrustc-codegen-cranelift-preview-x\n")
    keys.append(chain.key())
    hashes = chain.home / "update-hashes" / "stable-x"
    os.utime(hashes, ns=(hashes.stat().st_atime_ns, hashes.stat().st_mtime_ns + 10**9))
    keys.append(chain.key())
    (chain.home / "toolchains" / "nightly-x").mkdir()
    keys.append(chain.key())
    assert len(set(keys)) == len(keys), keys


def test_a_rust_toolchain_file_above_the_project_changes_it(chain: Toolchain) -> None:
    before = chain.key()
    (chain.root.parent / "rust-toolchain.toml").write_text('[toolchain]\nchannel = "nightly"\n')
    assert chain.key() != before


def test_the_cargo_config_and_sources_leave_it(chain: Toolchain) -> None:
    """What the tools' version answers do not depend on: its callers read the cargo
    config anew each time (the probe's settings, a build's rustc program), and a save
    must never cost a re-ask."""
    before = chain.key()
    (chain.root / ".cargo").mkdir()
    (chain.root / ".cargo" / "config.toml").write_text("[profile.dev]\ndebug = 1\n")
    (chain.root.parent / ".cargo").mkdir()
    (chain.root.parent / ".cargo" / "config.toml").write_text('[build]\nrustflags = ["-Cx"]\n')
    (chain.root / "src" / "main.rs").write_text("fn main() {}\n")
    assert chain.key() == before
