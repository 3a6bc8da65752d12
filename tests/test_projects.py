"""The watch -> build -> record loop of a watched project, against the real daemon and cargo."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

from rbd.contract import protocol
from tests.conftest import (
    WAIT_S,
    Events,
    Rbd,
    make_crate,
    processes,
    processes_in_group,
    rustc_processes_under,
    wait_gone,
)

SUMMARY_KEYS = {
    "id",
    "project",
    "started_at",
    "trigger",
    "command",
    "config",
    "outcome",
    "wall_s",
    "settle_s",
    "errors",
    "warnings",
    "units_rebuilt",
    "units_fresh",
    "linker",
    "phases",
}
PHASE_KEYS = set(protocol.PHASE_KEYS)


def started(rbd: Rbd, crate: Path, *args: str) -> Events:
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", *args, cwd=crate)
    return events


def edit(path: Path, text: str) -> None:
    path.write_text(text)


def main_rs(message: str) -> str:
    return f'fn main() {{\n    println!("{message}");\n}}\n'


def test_start_builds_then_every_edit_rebuilds(rbd: Rbd, crate: Path) -> None:
    events = started(rbd, crate)
    first = events.finished()
    assert first["outcome"] == "success"
    assert first["trigger"] == []
    assert first["project"] == str(crate)

    edit(crate / "src" / "main.rs", main_rs("edited"))
    second = events.finished()
    assert second["outcome"] == "success"
    assert second["trigger"] == ["src/main.rs"]
    assert second["id"] == first["id"] + 1
    assert second["units_rebuilt"] >= 1
    assert second["settle_s"] is not None and second["settle_s"] >= 0

    history = json.loads(rbd.ok("history", "--json", cwd=crate))
    assert [b["id"] for b in history] == [second["id"], first["id"]]
    for build in history:
        assert set(build) >= SUMMARY_KEYS
        assert set(build["phases"]) == PHASE_KEYS
        assert build["command"][:2] == ["cargo", "build"]
        assert build["linker"] in ("rust-lld", "lld", "mold", "gold", "bfd")
    assert history[0] == second

    shown = json.loads(rbd.ok("show", str(second["id"]), "--json"))
    assert {"units", "first_error", "diagnostics"} <= set(shown)
    assert shown["units"][0]["name"] == "demo"
    assert shown["units"][0]["kind"] == "bin"
    assert "✓" in rbd.ok("history", cwd=crate)


def test_manifest_lock_and_cargo_config_edits_rebuild(rbd: Rbd, crate: Path) -> None:
    events = started(rbd, crate)
    events.finished()
    manifest = crate / "Cargo.toml"
    manifest.write_text(manifest.read_text() + "\n[profile.dev]\nopt-level = 0\n")
    assert events.finished()["trigger"] == ["Cargo.toml"]
    (crate / ".cargo").mkdir()
    (crate / ".cargo" / "config.toml").write_text("[build]\n")
    assert events.finished()["trigger"] == [".cargo/config.toml"]
    (crate / "build.rs").write_text("fn main() {}\n")
    assert events.finished()["trigger"] == ["build.rs"]


def test_writes_that_change_nothing_trigger_nothing(rbd: Rbd, crate: Path) -> None:
    events = started(rbd, crate)
    first = events.finished()
    (crate / ".gitignore").write_text("/target\n/generated/\n")
    ignored = crate / "generated"
    ignored.mkdir()
    (ignored / "out.rs").write_text("// ignored\n")
    target = crate / "target" / "debug"
    (target / "stray.rs").write_text("// build output\n")
    (crate / "src" / ".main.rs.swp").write_text("swap")
    (crate / "src" / "main.rs~").write_text("backup")
    (crate / "README.md").write_text("not a build input\n")
    # Same content again: an editor saving an unmodified buffer.
    (crate / "src" / "main.rs").write_text((crate / "src" / "main.rs").read_text())

    edit(crate / "src" / "main.rs", main_rs("the real edit"))
    build = events.finished()
    assert build["id"] == first["id"] + 1, "something above triggered a build"
    assert build["trigger"] == ["src/main.rs"]


def test_atomic_save_triggers_exactly_one_build(rbd: Rbd, crate: Path) -> None:
    events = started(rbd, crate)
    first = events.finished()
    temp = crate / "src" / ".main.rs.tmp.4242"
    temp.write_text(main_rs("saved atomically"))
    os.replace(temp, crate / "src" / "main.rs")
    build = events.finished()
    assert build["trigger"] == ["src/main.rs"]
    edit(crate / "src" / "lib.rs", "pub fn sentinel() {}\n")
    sentinel = events.finished()
    assert sentinel["id"] == first["id"] + 2
    assert sentinel["trigger"] == ["src/lib.rs"]


def test_burst_of_500_files_gives_one_build(rbd: Rbd, crate: Path) -> None:
    # The storm rule takes over from the 10th pending file; before it, the default 20 ms
    # settle would split the burst if this writer stalled that long after its first few
    # files, as it once did on a loaded machine. 100 ms keeps that out of the test.
    (crate / "rbd.toml").write_text("settle_ms = 100\n")
    events = started(rbd, crate)
    first = events.finished()
    generated = crate / "src" / "gen"
    generated.mkdir()
    for i in range(500):
        (generated / f"m{i}.rs").write_text(f"pub const X: u32 = {i};\n")
    build = events.finished()
    assert len(build["trigger"]) == 500
    edit(crate / "src" / "main.rs", main_rs("sentinel"))
    sentinel = events.finished()
    assert sentinel["id"] == first["id"] + 2
    assert sentinel["trigger"] == ["src/main.rs"]


def test_build_waits_while_git_holds_its_index_lock(rbd: Rbd, crate: Path) -> None:
    (crate / ".git").mkdir()
    events = started(rbd, crate)
    events.finished()
    lock = crate / ".git" / "index.lock"
    lock.write_text("")
    edit(crate / "src" / "main.rs", main_rs("mid-checkout"))
    wait_for_state(rbd, crate, "waiting")
    assert not any(e.get("event") == protocol.BUILD_STARTED for e in drain(events))
    lock.unlink()
    assert events.finished()["trigger"] == ["src/main.rs"]


def state(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == protocol.PROJECT_STATE and e.get("state") == name


def test_every_state_change_is_published(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "demo")
    (crate / ".git").mkdir()
    events = started(rbd, crate)
    events.wait_for(state("building"))
    first = events.finished()
    events.wait_for(state("idle"))
    lock = crate / ".git" / "index.lock"
    lock.write_text("")
    edit(crate / "src" / "main.rs", main_rs("mid-checkout"))
    events.wait_for(state("settling"))
    events.wait_for(state("waiting"))
    # The event says what `rbd status` says: git holds the lock, so the state stays.
    assert rbd.request(protocol.STATUS, path=str(crate))["projects"][0]["state"] == "waiting"
    lock.unlink()
    events.wait_for(state("building"))
    second = events.finished()
    assert second["id"] == first["id"] + 1 and second["trigger"] == ["src/main.rs"]
    events.wait_for(state("idle"))
    shutil.rmtree(crate)
    events.wait_for(state("gone"))

    published = [e for e in events.seen if e.get("event") == protocol.PROJECT_STATE]
    states = [e["state"] for e in published]
    assert all(e["project"] == str(crate) for e in published)
    assert set(states) <= set(protocol.STATES)
    # Changes only: no state is published twice in a row.
    assert all(a != b for a, b in pairwise(states)), states
    # A build runs in state `building`: published before the build starts, and no other
    # state until it has finished.
    seen = events.seen
    for build in (first, second):
        start = next(
            i
            for i, e in enumerate(seen)
            if e.get("event") == protocol.BUILD_STARTED and e["build_id"] == build["id"]
        )
        end = next(
            i
            for i, e in enumerate(seen)
            if e.get("event") == protocol.BUILD_FINISHED and e["build"]["id"] == build["id"]
        )
        before = [e["state"] for e in seen[:start] if e.get("event") == protocol.PROJECT_STATE]
        assert before[-1] == "building", before
        assert not any(e.get("event") == protocol.PROJECT_STATE for e in seen[start:end])


def drain(events: Events) -> list[dict[str, Any]]:
    out = []
    while not events.queue.empty():
        out.append(events.queue.get_nowait())
    events.seen.extend(out)
    return out


def wait_for_state(rbd: Rbd, crate: Path, state: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        projects = rbd.request(protocol.STATUS, path=str(crate))["projects"]
        if projects and projects[0]["state"] == state:
            return
        time.sleep(0.02)
    raise AssertionError(f"project never reached state {state!r}")


def test_compile_error_is_recorded_and_daemon_survives(rbd: Rbd, crate: Path) -> None:
    events = started(rbd, crate)
    events.finished()
    # unused_parens is an early lint: rustc reports it even when type checking fails.
    broken = 'fn main() {\n    let x: u32 = "text";\n}\nfn two() -> u32 {\n    (2)\n}\n'
    edit(crate / "src" / "main.rs", broken)
    failed = events.finished()
    assert failed["outcome"] == "failure"
    assert failed["errors"] == 1
    assert failed["warnings"] >= 1
    shown = json.loads(rbd.ok("show", str(failed["id"]), "--json"))
    assert "mismatched types" in shown["first_error"]
    assert "unnecessary parentheses" in shown["diagnostics"]
    assert "mismatched types" in rbd.ok("show", str(failed["id"]))

    edit(crate / "src" / "main.rs", main_rs("fixed"))
    assert events.finished()["outcome"] == "success"
    status = json.loads(rbd.ok("status", "--json"))
    assert status["projects"][0]["last_build"]["outcome"] == "success"


def held_build_rs(release: Path) -> str:
    """A build script that runs until release exists: the build it is part of cannot end
    on its own before the test lets it, however fast or loaded the machine."""
    return (
        "fn main() {\n"
        '    println!("cargo:rerun-if-changed=build.rs");\n'
        f"    while !std::path::Path::new({json.dumps(str(release))}).exists() {{\n"
        "        std::thread::sleep(std::time::Duration::from_millis(10));\n"
        "    }\n"
        "}\n"
    )


def processes_under(path: Path, program: str) -> list[int]:
    """Live processes running program (by its file name) from below path."""
    below, name = str(path).encode(), program.encode()
    return [
        p.pid
        for p in processes()
        if not p.zombie and p.argv[0].startswith(below) and p.argv[0].endswith(name)
    ]


def test_change_during_build_cancels_it_and_kills_every_process(rbd: Rbd, tmp_path: Path) -> None:
    release = tmp_path / "release"  # outside the project: creating it is no change
    crate = make_crate(tmp_path / "held", "held", {"build.rs": held_build_rs(release)})
    events = started(rbd, crate)
    first = events.started()
    deadline = time.monotonic() + WAIT_S
    while not (script := processes_under(crate, "build-script-build")):
        assert time.monotonic() < deadline, "the build script never ran"
        time.sleep(0.02)
    pgid = os.getpgid(script[0])

    # The build is held: only the cancel the edit causes can end it.
    edit(crate / "src" / "main.rs", main_rs("edited mid-build"))
    cancelled = events.finished()
    assert cancelled["id"] == first["build_id"]
    assert cancelled["outcome"] == "cancelled"
    # Nothing of the build outlives its build_finished.
    assert processes_in_group(pgid) == []
    assert all(wait_gone(pid, 5) for pid in script)
    release.touch()
    rebuilt = events.finished()
    assert rebuilt["outcome"] == "success"
    assert rebuilt["trigger"] == ["src/main.rs"]
    history = json.loads(rbd.ok("history", "--json", cwd=crate))
    assert [b["outcome"] for b in history] == ["success", "cancelled"]


def wait_for_rustc(crate: Path) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = rustc_processes_under(crate)
        if found:
            return found
        time.sleep(0.02)
    raise AssertionError("rustc never started")


def test_build_script_and_cargo_writes_are_not_changes(rbd: Rbd, tmp_path: Path) -> None:
    build_rs = (
        "use std::time::SystemTime;\n"
        "fn main() {\n"
        '    println!("cargo:rerun-if-changed=build.rs");\n'
        "    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap();\n"
        '    let text = format!("pub const AT: u128 = {};\\n", now.as_nanos());\n'
        '    std::fs::write("src/generated.rs", text).unwrap();\n'
        "}\n"
    )
    crate = make_crate(tmp_path / "gen", "gen", {"build.rs": build_rs})
    assert not (crate / "Cargo.lock").exists()
    events = started(rbd, crate)
    first = events.finished()
    assert first["outcome"] == "success"
    assert (crate / "src" / "generated.rs").exists() and (crate / "Cargo.lock").exists()
    edit(crate / "src" / "main.rs", main_rs("sentinel"))
    sentinel = events.finished()
    assert sentinel["id"] == first["id"] + 1, "the build's own writes triggered a build"
    assert sentinel["trigger"] == ["src/main.rs"]


def test_new_directories_and_path_dependencies_are_watched(rbd: Rbd, tmp_path: Path) -> None:
    dep = make_crate(tmp_path / "dep", "dep", {"src/lib.rs": "pub fn f() -> u32 { 1 }\n"})
    (dep / "src" / "main.rs").unlink()
    crate = make_crate(
        tmp_path / "app",
        "app",
        {
            "Cargo.toml": '[package]\nname = "app"\nversion = "0.1.0"\nedition = "2021"\n\n'
            '[dependencies]\ndep = { path = "../dep" }\n',
            "src/main.rs": 'fn main() { println!("{}", dep::f()); }\n',
        },
    )
    events = started(rbd, crate)
    assert events.finished()["outcome"] == "success"
    edit(dep / "src" / "lib.rs", "pub fn f() -> u32 { 2 }\n")
    build = events.finished()
    assert build["trigger"] == [str(dep / "src" / "lib.rs")]
    assert build["units_rebuilt"] == 2
    # A directory that did not exist when watching began.
    (crate / "benches").mkdir()
    (crate / "benches" / "b.rs").write_text("fn main() {}\n")
    assert events.finished()["trigger"] == ["benches/b.rs"]


def test_builds_with_the_environment_of_rbd_start(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path / "envy",
        "envy",
        {"src/main.rs": 'fn main() { println!(env!("RBD_TEST_FLAVOR")); }\n'},
    )
    rbd.start_daemon()  # started without RBD_TEST_FLAVOR
    events = rbd.events()
    done = rbd.run("start", cwd=crate, env={**rbd.env, "RBD_TEST_FLAVOR": "vanilla"})
    assert done.returncode == 0, done.stderr
    assert events.finished()["outcome"] == "success"
    status = json.loads(rbd.ok("status", "--json"))
    assert status["projects"][0]["env"]["RBD_TEST_FLAVOR"] == "vanilla"


def test_command_and_args_are_configurable(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(
        tmp_path / "cfg",
        "cfg",
        {
            "Cargo.toml": '[package]\nname = "cfg"\nversion = "0.1.0"\nedition = "2021"\n\n'
            '[package.metadata.rbd]\ncommand = "check"\nsettle_ms = 5\n',
            "src/bin/other.rs": "fn main() {}\n",
        },
    )
    events = started(rbd, crate, "--", "--bin", "other")
    build = events.finished()
    assert build["command"] == [
        "cargo",
        "check",
        "--bin",
        "other",
        "--message-format=json",
        "--timings",
        "-v",
    ]
    assert build["outcome"] == "success"
    (crate / "rbd.toml").write_text('command = "test"\n')
    done = rbd.run("start", cwd=crate)
    assert done.returncode == 0
    status = json.loads(rbd.ok("status", "--json", str(crate)))
    assert status["projects"][0]["command"][:3] == ["cargo", "test", "--no-run"]
    (crate / "rbd.toml").write_text('command = "run"\n')
    done = rbd.run("start", cwd=crate)
    assert done.returncode == 1
    assert "command must start with one of" in done.stderr


def test_broken_manifest_is_a_recorded_failure_until_fixed(rbd: Rbd, crate: Path) -> None:
    manifest = crate / "Cargo.toml"
    good = manifest.read_text()
    manifest.write_text(good + "this is = = not toml\n")
    events = started(rbd, crate)
    failed = events.finished()
    assert failed["outcome"] == "failure"
    shown = json.loads(rbd.ok("show", str(failed["id"]), "--json"))
    assert "Cargo.toml" in shown["first_error"]
    manifest.write_text(good)
    assert events.finished()["outcome"] == "success"


def test_invalid_utf8_output_is_kept(rbd: Rbd, tmp_path: Path) -> None:
    build_rs = (
        "use std::io::Write;\n"
        "fn main() {\n"
        '    std::io::stdout().write_all(b"\\xff\\xfe not utf-8\\n").unwrap();\n'
        '    std::io::stderr().write_all(b"\\xff\\xfe not utf-8\\n").unwrap();\n'
        "    std::process::exit(1);\n"
        "}\n"
    )
    crate = make_crate(tmp_path / "bytes", "bytes", {"build.rs": build_rs})
    events = started(rbd, crate)
    failed = events.finished()
    assert failed["outcome"] == "failure"
    shown = json.loads(rbd.ok("show", str(failed["id"]), "--json"))
    assert "failed to run custom build command" in shown["first_error"]
    assert rbd.run("status").returncode == 0


def test_deleted_project_is_marked_gone_and_picked_up_again(
    rbd: Rbd, crate: Path, tmp_path: Path
) -> None:
    events = started(rbd, crate)
    events.finished()
    moved = tmp_path / "moved-away"
    crate.rename(moved)
    wait_for_state(rbd, crate, "gone")
    status = json.loads(rbd.ok("status", "--json"))
    assert "no longer exists" in status["projects"][0]["problem"]
    moved.rename(crate)
    wait_for_state(rbd, crate, "idle")
    edit(crate / "src" / "main.rs", main_rs("back"))
    build = events.wait_for(
        lambda e: (
            e.get("event") == protocol.BUILD_FINISHED
            and e["build"]["outcome"] == "success"
            and "src/main.rs" in e["build"]["trigger"]
        )
    )
    assert build["build"]["project"] == str(crate)


def test_a_build_configuration_builds_in_its_own_dir(rbd: Rbd, crate: Path) -> None:
    events = started(rbd, crate, "--config", "line-tables-only+mold")
    build = events.finished()
    assert build["outcome"] == "success" and build["config"] == "mold+line-tables-only"
    assert build["linker"] == "mold"
    assert "--config" in build["command"] and "--target-dir" in build["command"]
    (project,) = rbd.request(protocol.STATUS)["projects"]
    artifacts = Path(project["artifacts"])
    assert artifacts == crate / "target" / "rbd" / "mold+line-tables-only" / "debug"
    assert (artifacts / "demo").is_file()
    # The user's own target dir was not touched by it.
    assert not (crate / "target" / "debug" / "demo").exists()
    assert "mold+line-tables-only" in rbd.ok("status")


def test_bad_or_unavailable_configurations_are_refused(rbd: Rbd, crate: Path) -> None:
    rbd.start_daemon()
    bad = rbd.run("start", "--config", "turbo", cwd=crate)
    assert bad.returncode == 1 and "turbo" in bad.stderr and "mold" in bad.stderr
    two = rbd.run("start", "--config", "mold+lld", cwd=crate)
    assert two.returncode == 1 and "Traceback" not in two.stderr
    # A rustup that knows no nightly: cranelift is unavailable, with how to get it.
    fake = crate.parent / "fake-bin"
    fake.mkdir()
    (fake / "rustup").write_text("#!/bin/sh\necho 'stable-x86_64-unknown-linux-gnu (default)'\n")
    (fake / "rustup").chmod(0o755)
    env = {**rbd.env, "PATH": f"{fake}:{rbd.env['PATH']}"}
    crane = rbd.run("start", "--config", "cranelift", cwd=crate, env=env)
    assert crane.returncode == 1
    assert "rustc-codegen-cranelift-preview" in crane.stderr, crane.stderr
    assert rbd.request(protocol.STATUS)["projects"] == []


def test_a_cargo_lock_written_after_the_build_is_a_change(rbd: Rbd, tmp_path: Path) -> None:
    """cargo writes Cargo.lock while it runs (the build's own write); a `cargo update`
    after it exited is the user's, and builds."""
    crate = make_crate(tmp_path / "locked", "locked")
    events = started(rbd, crate)
    first = events.finished()
    assert first["outcome"] == "success" and (crate / "Cargo.lock").exists()
    lock = crate / "Cargo.lock"
    lock.write_text(lock.read_text() + "\n")
    build = events.finished()
    assert build["id"] == first["id"] + 1
    assert build["trigger"] == ["Cargo.lock"]
