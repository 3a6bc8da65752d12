"""Which linker linked a binary, told from the binary itself (real links, real linkers)."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from rbd.daemon.build.linker import identify
from tests.conftest import make_crate

LINUX_X86 = platform.system() == "Linux" and platform.machine() == "x86_64"


def link(tmp_path: Path, rustflags: str) -> Path:
    crate = make_crate(tmp_path / "linked", "linked")
    subprocess.run(
        ["cargo", "build", "-q"],
        cwd=crate,
        check=True,
        capture_output=True,
        env={**_env(), "RUSTFLAGS": rustflags},
    )
    return crate / "target" / "debug" / "linked"


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "RUSTFLAGS"}


@pytest.mark.skipif(not LINUX_X86, reason="rustc's default linker differs elsewhere")
def test_rusts_default_on_x86_64_linux_is_its_bundled_lld(tmp_path: Path) -> None:
    assert identify(link(tmp_path, "")) == "rust-lld"


@pytest.mark.skipif(not LINUX_X86, reason="-Clinker-features is x86_64 Linux only")
def test_gnu_ld(tmp_path: Path) -> None:
    assert identify(link(tmp_path, "-Clinker-features=-lld")) == "bfd"


@pytest.mark.skipif(shutil.which("mold") is None, reason="mold is not installed")
def test_mold(tmp_path: Path) -> None:
    assert identify(link(tmp_path, "-Clinker-features=-lld -Clink-arg=-fuse-ld=mold")) == "mold"


@pytest.mark.skipif(shutil.which("ld.gold") is None, reason="gold is not installed")
def test_gold(tmp_path: Path) -> None:
    assert identify(link(tmp_path, "-Clinker-features=-lld -Clink-arg=-fuse-ld=gold")) == "gold"


@pytest.mark.skipif(
    shutil.which("wild") is None, reason="wild is not installed: cargo install --locked wild-linker"
)
@pytest.mark.skipif(not LINUX_X86, reason="-Clinker-features is x86_64 Linux only")
def test_wild(tmp_path: Path) -> None:
    # gcc 12 has no -fuse-ld=wild: it finds wild as the `ld` of a -B directory.
    (tmp_path / "ld-dir").mkdir()
    (tmp_path / "ld-dir" / "ld").symlink_to(str(shutil.which("wild")))
    flags = f"-Clinker-features=-lld -Clink-arg=-B{tmp_path / 'ld-dir'}"
    assert identify(link(tmp_path, flags)) == "wild"


def test_not_elf_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "script").write_text("#!/bin/sh\n")
    assert identify(tmp_path / "script") == "unknown"
    assert identify(tmp_path / "missing") == "unknown"
