"""rbd's compiled rustc wrapper and linker shim: built once, chained to a user's
wrapper, and recording each linker run (real rustc and cargo)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from rbd.daemon.build import shim
from tests.conftest import SHARED_CACHE, make_crate


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_the_shim_is_compiled_once_and_shared(tmp_path: Path) -> None:
    first = await shim.Shims(SHARED_CACHE).get(dict(os.environ))
    assert first is not None and os.access(first.wrapper, os.X_OK)
    built = first.wrapper.stat().st_mtime_ns
    second = await shim.Shims(SHARED_CACHE).get(dict(os.environ))
    assert second == first and first.wrapper.stat().st_mtime_ns == built
    assert (first.directory / "default" / "cc").resolve() == first.wrapper.resolve()


@pytest.mark.anyio
async def test_without_rustc_there_is_no_shim_and_a_warning(tmp_path: Path) -> None:
    with capture_logs() as logs:
        found = await shim.Shims(tmp_path / "cache").get({"PATH": str(tmp_path / "nothing")})
    assert found is None
    assert [e["event"] for e in logs] == ["shim_unavailable"]
    assert "no rustc" in logs[0]["error"]


def test_build_env_chains_a_user_wrapper_but_never_an_rbd_wrapper(tmp_path: Path) -> None:
    s = shim.Shim(tmp_path)
    env = s.build_env({"RUSTC_WRAPPER": "sccache", "PATH": "/bin"}, "sccache", tmp_path / "t")
    assert env["RUSTC_WRAPPER"] == str(s.wrapper) and env["RBD_CHAIN_WRAPPER"] == "sccache"
    looped = s.build_env({}, str(tmp_path / "x" / shim.WRAPPER_NAME), tmp_path / "t")
    assert "RBD_CHAIN_WRAPPER" not in looped


def test_read_links_skips_what_it_cannot_read(tmp_path: Path) -> None:
    good = "app\t0.1.0\tapp\tbin\t1000000000\t1250000000\t0\tcc\n"
    (tmp_path / "link-1.tsv").write_text(good + "half\ta line\n")
    (tmp_path / "link-2.tsv").write_text("a\t1\ta\tbin\tnot-a-number\t2\t0\tcc\n")
    records = shim.read_links(tmp_path)
    assert len(records) == 1
    assert records[0].crate == "app" and records[0].seconds == pytest.approx(0.25)


def cargo_build(crate: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["cargo", "build"], cwd=crate, env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.anyio
async def test_links_are_recorded_and_a_failing_linker_still_fails(tmp_path: Path) -> None:
    found = await shim.Shims(SHARED_CACHE).get(dict(os.environ))
    assert found is not None
    crate = make_crate(
        tmp_path / "two",
        "two",
        {"src/lib.rs": "pub fn f() -> u8 { 1 }\n", "src/main.rs": "fn main() { two::f(); }\n"},
    )
    timing = tmp_path / "timing"
    timing.mkdir()
    env = found.build_env(dict(os.environ), None, timing)
    assert cargo_build(crate, env).returncode == 0
    records = shim.read_links(timing)
    # The lib is an rlib: no linker. The bin links once, with rustc's default cc.
    assert [(r.package, r.crate, r.kind, r.exit_code) for r in records] == [
        ("two", "two", "bin", 0)
    ]
    assert records[0].linker == "cc" and 0 < records[0].seconds < 30

    failing = tmp_path / "bad-linker"
    failing.write_text("#!/bin/sh\necho 'bad-linker: no' >&2\nexit 3\n")
    failing.chmod(0o755)
    (crate / "src" / "main.rs").write_text("fn main() { two::f(); two::f(); }\n")
    env["RUSTFLAGS"] = f"-C linker={failing}"
    done = cargo_build(crate, env)
    assert done.returncode != 0 and "bad-linker: no" in done.stderr
    last = shim.read_links(timing)[-1]
    assert last.exit_code == 3 and last.linker == str(failing)


@pytest.mark.anyio
async def test_a_missing_linker_is_reported_as_rustc_reports_it(tmp_path: Path) -> None:
    """A linker that does not exist (the project's config names one not installed): rustc
    says `linker X not found`, as without rbd, not that rbd's shim failed."""
    found = await shim.Shims(SHARED_CACHE).get(dict(os.environ))
    assert found is not None
    crate = make_crate(tmp_path / "nolinker", "nolinker")
    timing = tmp_path / "timing"
    timing.mkdir()
    env = found.build_env(dict(os.environ), None, timing)
    for linker in ("rbd-no-such-linker", str(tmp_path / "no" / "such-linker")):
        env["RUSTFLAGS"] = f"-C linker={linker}"
        done = cargo_build(crate, env)
        assert done.returncode != 0
        assert f"linker `{linker}` not found" in done.stderr, done.stderr
        assert "rbd" not in done.stderr.replace(linker, "").replace(str(tmp_path), "")
