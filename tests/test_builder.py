"""What a build records about itself, end to end through the daemon with real cargo:
per-unit timings, phases, dirty reasons, lock waits, and that measuring changes nothing."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import SLOW_MAIN, WAIT_S, Rbd, make_crate, wait_gone
from tests.test_projects import started

SLEEPY_BUILD_RS = (
    "fn main() {\n"
    '    println!("cargo:rerun-if-changed=build.rs");\n'
    "    std::thread::sleep(std::time::Duration::from_millis(300));\n"
    "}\n"
)


def workspace(root: Path) -> Path:
    make_crate(
        root, "ws", {"Cargo.toml": '[workspace]\nmembers = ["lib", "app"]\nresolver = "2"\n'}
    )
    (root / "src").rename(root / "unused")
    make_crate(
        root / "lib",
        "wslib",
        {"src/lib.rs": "pub fn v() -> u32 { 1 }\n", "build.rs": SLEEPY_BUILD_RS},
    )
    (root / "lib" / "src" / "main.rs").unlink()
    make_crate(
        root / "app",
        "app",
        {
            "Cargo.toml": '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n\n'
            '[dependencies]\nwslib = { path = "../lib" }\n',
            "src/main.rs": 'fn main() { println!("{}", wslib::v()); }\n',
        },
    )
    return root


def show(rbd: Rbd, build_id: int) -> dict[str, object]:
    detail: dict[str, object] = json.loads(rbd.ok("show", str(build_id), "--json"))
    return detail


def test_build_script_lib_and_bin_each_get_their_time(rbd: Rbd, tmp_path: Path) -> None:
    root = workspace(tmp_path / "ws")
    events = started(rbd, root)
    event = events.wait_for(lambda e: e.get("event") == "build_finished")
    first = event["build"]
    assert first["outcome"] == "success"
    # The live event carries the same per-unit numbers `rbd show` prints.
    assert event["units"] == show(rbd, first["id"])["units"]
    phases = first["phases"]
    assert phases["build_script_s"] >= 0.3
    units = show(rbd, first["id"])["units"]
    assert isinstance(units, list)
    run = next(u for u in units if u["kind"] == "build-script-run")
    assert run["name"] == "wslib" and run["build_script_s"] >= 0.3 and run["compile_s"] is None
    assert run["critical_path"] is True
    assert all(u["build_script_s"] is None for u in units if u["kind"] != "build-script-run")
    # The sleeping script is not compile time: the compile phase (with link) is the
    # critical path's compiled units' time on it (`path_s`: up to where each unblocked
    # the next), the script's run is build-script time, and both fit in the wall time.
    on_path = [u for u in units if u["critical_path"]]
    compiled = [u["path_s"] for u in on_path if u["kind"] != "build-script-run"]
    assert phases["compile_s"] + (phases["link_s"] or 0.0) == pytest.approx(
        sum(compiled), abs=0.001
    )
    assert phases["build_script_s"] == pytest.approx(run["path_s"], abs=0.001)
    assert first["wall_s"] >= phases["compile_s"] + phases["build_script_s"]

    (root / "lib" / "src" / "lib.rs").write_text("pub fn v() -> u32 { 2 }\n")
    second = events.finished()
    assert second["units_rebuilt"] == 2
    assert second["phases"]["build_script_s"] == 0  # fresh this time
    detail = show(rbd, second["id"])
    units = detail["units"]
    assert isinstance(units, list)
    assert {(u["name"], u["kind"]) for u in units} == {("wslib", "lib"), ("app", "bin")}
    lib = next(u for u in units if u["kind"] == "lib")
    assert lib["frontend_s"] is not None and lib["codegen_s"] is not None
    assert "lib/src/lib.rs" in lib["dirty_reason"] and "changed" in lib["dirty_reason"]
    app = next(u for u in units if u["kind"] == "bin")
    assert app["frontend_s"] is None and app["compile_s"] > 0
    # The shim timed the bin's link, and cargo's unit time is compile plus link.
    assert app["link_s"] > 0 and lib["link_s"] is None
    assert app["compile_s"] + app["link_s"] == pytest.approx(app["total_s"], abs=0.011)
    assert second["phases"]["link_s"] == pytest.approx(app["link_s"])
    assert "wslib" in app["dirty_reason"]
    assert second["linker"] == "rust-lld" or second["linker"] in ("lld", "mold", "gold", "bfd")
    total = sum(
        v or 0.0 for k, v in second["phases"].items() if k not in ("frontend_s", "codegen_s")
    )
    assert total == pytest.approx(second["wall_s"], abs=0.02)
    assert not [
        p for p in (root / "target" / "cargo-timings").iterdir() if p.name != "cargo-timing.html"
    ]


def test_measuring_changes_nothing_cargo_builds(rbd: Rbd, tmp_path: Path) -> None:
    root = workspace(tmp_path / "ws")
    events = started(rbd, root)
    events.finished()
    (root / "lib" / "src" / "lib.rs").write_text("pub fn v() -> u32 { 3 }\n")
    events.finished()
    plain = subprocess.run(
        ["cargo", "build", "-v"], cwd=root, capture_output=True, text=True, check=True
    )
    assert "Dirty" not in plain.stderr and "Compiling" not in plain.stderr, plain.stderr
    assert plain.stderr.count("Fresh") >= 2


def test_a_held_cargo_lock_shows_as_lock_wait(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "fast", "fast")
    events = started(rbd, crate)
    events.finished()
    # Another cargo (rust-analyzer, a terminal) building into the same target dir.
    other = make_crate(tmp_path / "other", "other", {"src/main.rs": SLOW_MAIN})
    holder = subprocess.Popen(
        ["cargo", "build"],
        cwd=other,
        env={**os.environ, "CARGO_TARGET_DIR": str(crate / "target")},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert holder.stderr is not None
        for line in holder.stderr:
            if "Compiling other" in line:
                break
        (crate / "src" / "main.rs").write_text('fn main() { println!("waited"); }\n')
        events.started()
        # Released only once the daemon's cargo is blocked on it: the build waited.
        deadline = time.monotonic() + WAIT_S
        while not blocked_on_a_lock(crate):
            assert time.monotonic() < deadline, "the build never waited for the lock"
            time.sleep(0.02)
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()
    build = events.finished()
    assert build["outcome"] == "success"
    phases = build["phases"]
    # The wait is its own phase, not overhead: without the measurement it would be 0 and
    # all of it in overhead_s.
    assert phases["lock_wait_s"] > 0
    assert phases["overhead_s"] + phases["lock_wait_s"] <= build["wall_s"]
    assert wait_gone(holder.pid, 5)


def test_a_wait_on_the_package_cache_is_no_lock_wait(rbd: Rbd, tmp_path: Path) -> None:
    # Another cargo downloading, or only reading the cache (`cargo clean --dry-run`, as
    # rbd's own tune check runs it), holds the package cache: cargo prints "Blocking
    # waiting for file lock on package cache". No target dir of rust-analyzer's own
    # avoids that wait, so it must not count as a build-directory lock wait.
    cargo_home = tmp_path / "cargo-home"
    cargo_home.mkdir()
    rbd.env["CARGO_HOME"] = str(cargo_home)
    crate = make_crate(tmp_path / "cached", "cached")
    events = started(rbd, crate)
    events.finished()
    with open(cargo_home / ".package-cache", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (crate / "src" / "main.rs").write_text('fn main() { println!("waited"); }\n')
        events.started()
        deadline = time.monotonic() + WAIT_S
        while not blocked_on_a_lock(crate):
            assert time.monotonic() < deadline, "the build never waited for the package cache"
            time.sleep(0.02)
    build = events.finished()
    assert build["outcome"] == "success"
    # It waited (above), and before the fix all of that wait was lock_wait_s.
    assert build["phases"]["lock_wait_s"] == 0


def blocked_on_a_lock(cwd: Path) -> bool:
    """Whether a process working in cwd waits for a file lock (Linux: a `->` line of
    /proc/locks is a request blocked behind the lock on the line above it)."""
    with open("/proc/locks") as f:
        waiting = [line.split("->", 1)[1].split() for line in f if "->" in line]
    for fields in waiting:
        # FLOCK ADVISORY WRITE <pid> <dev:inode> <start> <end>
        try:
            if os.readlink(f"/proc/{fields[3]}/cwd") == str(cwd.resolve()):
                return True
        except (IndexError, OSError):
            continue
    return False


SLOW_GCC = '#!/bin/sh\n# A gcc driver that takes its time.\nsleep 0.4\nexec cc "$@"\n'


def test_time_in_a_configured_linker_is_link_time(rbd: Rbd, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    slow_gcc = tools / "slow-gcc"
    slow_gcc.write_text(SLOW_GCC)
    slow_gcc.chmod(0o755)
    host = subprocess.run(
        ["rustc", "--print", "host-tuple"], capture_output=True, text=True, check=True
    ).stdout.strip()
    config = f'[target.{host}]\nlinker = "{slow_gcc}"\n'
    crate = make_crate(tmp_path / "slow", "slow", {".cargo/config.toml": config})
    events = started(rbd, crate)
    events.finished()
    (crate / "src" / "main.rs").write_text('fn main() { println!("relinked"); }\n')
    build = events.finished()
    assert build["outcome"] == "success"
    # Named like a gcc driver, the linker links with GNU ld, not rust-lld.
    assert build["linker"] == "bfd"
    assert build["phases"]["link_s"] >= 0.4
    units = show(rbd, build["id"])["units"]
    assert isinstance(units, list) and len(units) == 1
    unit = units[0]
    assert unit["link_s"] >= 0.4
    # The sleep is not compile time.
    assert unit["compile_s"] <= unit["total_s"] - 0.39
    assert build["phases"]["compile_s"] <= unit["compile_s"] + 0.011
    plain = subprocess.run(
        ["cargo", "build", "-v"], cwd=crate, capture_output=True, text=True, check=True
    )
    assert "Dirty" not in plain.stderr and "Compiling" not in plain.stderr, plain.stderr


def test_a_users_rustc_wrapper_still_runs_and_is_reported(rbd: Rbd, tmp_path: Path) -> None:
    calls = tmp_path / "calls.log"
    wrapper = tmp_path / "my-wrapper"
    wrapper.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec "$@"\n')
    wrapper.chmod(0o755)
    rbd.env["RUSTC_WRAPPER"] = str(wrapper)
    crate = make_crate(tmp_path / "wrapped", "wrapped")
    events = started(rbd, crate)
    events.finished()
    calls.unlink()
    (crate / "src" / "main.rs").write_text('fn main() { println!("wrapped"); }\n')
    build = events.finished()
    assert build["outcome"] == "success"
    assert build["rustc_wrapper"] == str(wrapper)
    assert "--crate-name wrapped" in calls.read_text()
    assert build["phases"]["link_s"] > 0  # rbd's own wrapper ran too
    assert str(wrapper) in rbd.ok("show", str(build["id"]))


def test_build_kinds_a_failed_unit_and_a_bin_rebuilt_for_its_lib(rbd: Rbd, tmp_path: Path) -> None:
    """full, then edit; a dependency outside the workspace makes a deps build; a unit
    that fails is counted and timed; a package's bin says it rebuilt because its lib did."""
    ext = make_crate(tmp_path / "ext", "ext", {"src/lib.rs": "pub fn e() -> u32 { 1 }\n"})
    (ext / "src" / "main.rs").unlink()
    # Stays fresh when `ext` changes: that build is a deps build, not a full one.
    other = make_crate(tmp_path / "other", "other", {"src/lib.rs": "pub fn o() {}\n"})
    (other / "src" / "main.rs").unlink()
    crate = make_crate(
        tmp_path / "p",
        "p",
        {
            "Cargo.toml": '[package]\nname = "p"\nversion = "0.1.0"\nedition = "2021"\n\n'
            '[dependencies]\next = { path = "../ext" }\nother = { path = "../other" }\n',
            "src/lib.rs": "pub fn f() -> u32 { ext::e() }\n",
            "src/main.rs": 'fn main() { println!("{}", p::f()); }\n',
        },
    )
    events = started(rbd, crate)
    first = events.finished()
    assert (first["outcome"], first["kind"]) == ("success", "full")
    assert first["units_fresh"] == 0 and first["units_rebuilt"] == 4
    phases = first["phases"]
    assert phases["queue_s"] is not None
    total = sum(v or 0.0 for k, v in phases.items() if k not in ("frontend_s", "codegen_s"))
    assert total == pytest.approx(first["wall_s"], abs=0.02)
    explain = show(rbd, first["id"])["explain"]
    assert isinstance(explain, dict)
    assert explain["jobs"] and explain["units_s"] > 0 and len(explain["top_units"]) == 4

    (crate / "src" / "lib.rs").write_text("pub fn f() -> u32 { ext::e() + 1 }\n")
    edit = events.finished()
    assert (edit["kind"], edit["units_rebuilt"]) == ("edit", 2)
    units = show(rbd, edit["id"])["units"]
    assert isinstance(units, list)
    reasons = {u["kind"]: u["dirty_reason"] for u in units}
    assert "src/lib.rs" in reasons["lib"]
    assert reasons["bin"] == "rebuilt because `p` (lib) was"

    (ext / "src" / "lib.rs").write_text("pub fn e() -> u32 { 2 }\n")
    deps = events.finished()
    assert deps["kind"] == "deps" and deps["units_rebuilt"] == 3

    (crate / "src" / "lib.rs").write_text('pub fn f() -> u32 { "no" }\n')
    failed = events.finished()
    assert (failed["outcome"], failed["kind"], failed["units_rebuilt"]) == ("failure", "edit", 1), (
        show(rbd, failed["id"])["units"]
    )
    assert failed["phases"]["compile_s"] > 0
    units = show(rbd, failed["id"])["units"]
    assert isinstance(units, list)
    assert [(u["name"], u["kind"], u["failed"]) for u in units] == [("p", "lib", True)]
    assert units[0]["total_s"] > 0 and units[0]["critical_path"]
    rendered = rbd.ok("show", str(failed["id"]))
    assert "1 rebuilt (1 failed)" in rendered
