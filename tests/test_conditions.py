"""What a build ran with (daemon.projects.conditions): read from the project's files and
the toolchain, cached, recorded with every build; and steps named from real builds where
each kind of change was made between them (daemon.advice.steps)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from rbd.contract import protocol
from rbd.daemon.advice import steps
from rbd.daemon.build import cargo_config
from rbd.daemon.projects import conditions
from rbd.daemon.projects.settings import ProjectConfig
from rbd.daemon.store.asyncstore import AsyncStore
from rbd.daemon.store.sqlite import Store
from tests.conftest import Rbd, make_crate

HOST = "x86_64-unknown-linux-gnu"
BUILD = ["cargo", "build", "--message-format=json", "--timings", "-v"]


def config_file(root: Path, text: str) -> None:
    path = root / ".cargo" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def profile(root: Path, argv: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    environment = env or {"HOME": str(root)}
    files = cargo_config.load(root, environment)
    return conditions.effective_profile(root, argv, environment, files)


# --- the cargo command --------------------------------------------------------------------


def test_the_profile_a_command_builds_with() -> None:
    assert conditions.profile_name(BUILD) == "dev"
    assert conditions.profile_name(["cargo", "build", "--release"]) == "release"
    assert conditions.profile_name(["cargo", "check", "-r"]) == "release"
    assert conditions.profile_name(["cargo", "build", "--profile", "fast"]) == "fast"
    assert conditions.profile_name(["cargo", "build", "--profile=fast", "--release"]) == "fast"
    assert conditions.profile_name(["cargo", "+nightly", "test", "--no-run"]) == "test"
    assert conditions.profile_name(["cargo", "bench", "--no-run"]) == "bench"
    # After `--` the words are rustc's or clippy's.
    assert conditions.profile_name(["cargo", "clippy", "--", "--release"]) == "dev"


def test_the_profile_is_merged_as_cargo_merges_it(tmp_path: Path) -> None:
    make_crate(
        tmp_path,
        files={
            "Cargo.toml": '[package]\nname = "p"\nversion = "0.1.0"\n\n'
            "[profile.dev]\ndebug = 1\nopt-level = 1\n"
            '[profile.dev.package."*"]\nopt-level = 2\n'
            '[profile.fast]\ninherits = "release"\ncodegen-units = 8\n'
            '[profile.loop]\ninherits = "loop"\n'
        },
    )
    config_file(tmp_path, "[profile.dev]\ndebug = 0\n[profile.release]\nlto = true\n")
    # The config file wins over Cargo.toml, key by key.
    assert profile(tmp_path, BUILD) == {
        "name": "dev",
        "debug": 0,
        "opt-level": 1,
        "package": {"*": {"opt-level": 2}},
    }
    env = {"HOME": str(tmp_path), "CARGO_PROFILE_DEV_DEBUG": "2", "CARGO_INCREMENTAL": "0"}
    # The environment over the files; --config (rbd's configurations) over everything.
    argv = [*BUILD, "--config", 'profile.dev.debug="line-tables-only"']
    argv += ["--config", 'profile.dev.package."*".opt-level=1']
    assert profile(tmp_path, BUILD, env)["debug"] == 2
    assert profile(tmp_path, argv, env) == {
        "name": "dev",
        "debug": "line-tables-only",
        "opt-level": 1,
        "package": {"*": {"opt-level": 1}},
        "incremental": False,
    }
    # A custom profile: its own keys over those of the profile it inherits.
    assert profile(tmp_path, ["cargo", "build", "--profile", "fast"]) == {
        "name": "fast",
        "lto": True,
        "codegen-units": 8,
    }
    # cargo refuses a profile inheriting itself; reading it must still end.
    assert profile(tmp_path, ["cargo", "build", "--profile", "loop"]) == {"name": "loop"}


def test_rustflags_are_the_first_source_set_as_in_cargo(tmp_path: Path) -> None:
    home = {"HOME": str(tmp_path)}
    assert conditions.rustflags(BUILD, home, [], HOST) is None
    config_file(tmp_path, '[build]\nrustflags = ["--cfg", "a"]\n')
    files = cargo_config.load(tmp_path, home)
    assert conditions.rustflags(BUILD, home, files, HOST) == "--cfg a"
    config_file(
        tmp_path, f'[build]\nrustflags = ["--cfg", "a"]\n[target.{HOST}]\nrustflags = "-C x"\n'
    )
    files = cargo_config.load(tmp_path, home)
    assert conditions.rustflags(BUILD, home, files, HOST) == "-C x"
    assert conditions.rustflags(BUILD, {**home, "RUSTFLAGS": "-C y"}, files, HOST) == "-C y"
    encoded = {**home, "CARGO_ENCODED_RUSTFLAGS": "-C\x1flink-arg=-fuse-ld=mold"}
    assert conditions.rustflags(BUILD, encoded, files, HOST) == "-C link-arg=-fuse-ld=mold"


def test_a_lockfile_is_its_digest_and_its_packages() -> None:
    lock = (
        b"version = 4\n\n"
        b'[[package]]\nname = "demo"\nversion = "0.1.0"\ndependencies = ["serde"]\n\n'
        b'[[package]]\nname = "serde"\nversion = "1.0.200"\nsource = "registry+x"\n'
    )
    assert conditions.lock_packages(lock) == [("demo", "0.1.0"), ("serde", "1.0.200")]
    assert conditions.lock_digest(lock) == conditions.lock_digest(lock)
    assert len(conditions.lock_digest(lock)) == 16
    assert conditions.lock_digest(lock) != conditions.lock_digest(lock + b"\n")
    assert conditions.lock_packages(b"[[package]\n") == []


# --- the toolchain and the cache ----------------------------------------------------------


class Counting:
    """A runner that counts the processes it would spawn, answering like rustup's tools."""

    def __init__(self) -> None:
        self.argv: list[list[str]] = []

    async def __call__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> str | None:
        self.argv.append(argv)
        channel = env.get("RUSTUP_TOOLCHAIN") or (
            "nightly" if (cwd / "rust-toolchain.toml").exists() else "stable"
        )
        version = "1.97.0-nightly" if channel == "nightly" else "1.95.0"
        if argv[1] == "-vV":
            return f"rustc {version} (abc 2026-05-19)\nbinary: rustc\nhost: {HOST}\n"
        return f"cargo {version} (def 2026-05-18)\n"


async def gather(
    collector: conditions.Collector, root: Path, argv: list[str], env: dict[str, str]
) -> dict[str, Any]:
    gathering = collector.begin(root, argv, env, ProjectConfig(), "default")
    spawned = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(gathering.run, spawned)
        spawned.set()
        found = await gathering.finish()
    assert found is not None
    return dict(found)


@pytest.mark.anyio
async def test_versions_are_asked_once_per_toolchain(tmp_path: Path) -> None:
    root = make_crate(tmp_path / "demo")
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    store = AsyncStore(Store(tmp_path / "rbd.sqlite3"))
    runner = Counting()
    collector = conditions.Collector(store, runner)
    first = await gather(collector, root, BUILD, env)
    assert first["rustc"] == "rustc 1.95.0 (abc 2026-05-19)"
    assert first["cargo"] == "cargo 1.95.0 (def 2026-05-18)"
    assert first["settings"] == {"command": "build", "args": [], "config": "default"}
    assert (first["lock_digest"], first["tune"], first["rustflags"]) == (None, None, None)
    assert len(runner.argv) == 2
    # The next save: no process at all.
    assert await gather(collector, root, BUILD, env) == first
    assert len(runner.argv) == 2
    # What chooses another toolchain asks again: `cargo +nightly`, RUSTUP_TOOLCHAIN, a file.
    plus = await gather(collector, root, ["cargo", "+nightly", *BUILD[1:]], env)
    assert plus["rustc"] == "rustc 1.97.0-nightly (abc 2026-05-19)" and len(runner.argv) == 4
    variable = await gather(collector, root, BUILD, {**env, "RUSTUP_TOOLCHAIN": "nightly"})
    assert variable["rustc"] == plus["rustc"] and len(runner.argv) == 4  # the same toolchain
    (root / "rust-toolchain.toml").write_text('[toolchain]\nchannel = "nightly"\n')
    filed = await gather(collector, root, BUILD, env)
    assert filed["cargo"] == "cargo 1.97.0-nightly (def 2026-05-18)" and len(runner.argv) == 6
    # RUSTC names another rustc: that one is asked.
    await gather(collector, root, BUILD, {**env, "RUSTC": "/opt/rust/bin/rustc"})
    assert ["/opt/rust/bin/rustc", "-vV"] in runner.argv
    store.sync.close()


@pytest.mark.anyio
async def test_the_lockfile_is_read_as_cargo_left_it_and_its_packages_kept_once(
    tmp_path: Path,
) -> None:
    root = make_crate(tmp_path / "demo")
    lock = root / "Cargo.lock"
    lock.write_text('version = 4\n\n[[package]]\nname = "demo"\nversion = "0.1.0"\n')
    store = AsyncStore(Store(tmp_path / "rbd.sqlite3"))
    collector = conditions.Collector(store, Counting())
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    gathering = collector.begin(root, BUILD, env, ProjectConfig(), "default")
    spawned = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(gathering.run, spawned)
        spawned.set()
        with anyio.fail_after(10):
            while gathering.conditions is None:
                await anyio.sleep(0.01)
        before = gathering.conditions["lock_digest"]
        # cargo resolves an edited manifest and rewrites Cargo.lock while it builds.
        lock.write_text(lock.read_text() + '\n[[package]]\nname = "helper"\nversion = "0.2.0"\n')
        found = await gathering.finish()
    assert found is not None and before is not None
    after = found["lock_digest"]
    assert after == conditions.lock_digest(lock.read_bytes()) != before
    assert store.sync.lockfile(before) == [("demo", "0.1.0")]
    assert store.sync.lockfile(after) == [("demo", "0.1.0"), ("helper", "0.2.0")]
    store.sync.close()


@pytest.mark.anyio
async def test_the_real_toolchain_answers_and_a_second_build_spawns_nothing(
    tmp_path: Path,
) -> None:
    root = make_crate(tmp_path / "demo")
    store = AsyncStore(Store(tmp_path / "rbd.sqlite3"))
    spawned: list[list[str]] = []

    async def run(argv: list[str], cwd: Path, env: dict[str, str]) -> str | None:
        spawned.append(argv)
        return await conditions.run_tool(argv, cwd, env)

    collector = conditions.Collector(store, run)
    env = {k: v for k, v in os.environ.items() if k != "RUSTUP_TOOLCHAIN"}
    first = await gather(collector, root, BUILD, env)
    assert str(first["rustc"]).startswith("rustc 1.") and str(first["cargo"]).startswith("cargo 1.")
    assert await gather(collector, root, BUILD, env) == first
    assert len(spawned) == 2
    store.sync.close()


# --- real builds, each kind of change between them ----------------------------------------

MANIFEST = (
    '[package]\nname = "demo"\nversion = "0.1.0"\nedition = "2021"\n\n'
    '[dependencies]\nhelper = { path = "helper" }\n'
)


def library(name: str, version: str) -> dict[str, str]:
    return {
        f"{name}/Cargo.toml": f'[package]\nname = "{name}"\nversion = "{version}"\n'
        'edition = "2021"\n',
        f"{name}/src/lib.rs": "pub fn help() -> u32 { 7 }\n",
    }


def project(root: Path) -> Path:
    """A bin with a path dependency (an edit of the bin leaves it fresh: an edit rebuild),
    and a second library it does not depend on yet. No network needed."""
    files = {"Cargo.toml": MANIFEST, **library("helper", "0.2.0"), **library("extra", "0.3.0")}
    return make_crate(root, files=files)


def nightly() -> str | None:
    try:
        listing = subprocess.run(
            ["rustup", "toolchain", "list"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return None
    return next((line.split()[0] for line in listing.splitlines() if "nightly" in line), None)


def stepped(
    n: int, before: dict[str, Any], after: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Edit rebuild #n of a made-up series stepping from 0.3 s to 0.9 s at #6, with the
    conditions of real builds: before's up to #5, after's from #6."""
    wall = 0.3 if n < 6 else 0.9
    build = {"id": n, "outcome": "success", "trigger": ["src/main.rs"], "kind": "edit"}
    return {**build, "wall_s": wall}, before if n < 6 else after


def rebuilt(events: Any, path: Path, text: str) -> dict[str, Any]:
    """Write path; the build the change triggered, once it succeeded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    build: dict[str, Any] = events.finished()
    assert build["outcome"] == "success", build
    return build


def test_each_kind_of_change_is_named_from_real_builds(rbd: Rbd, tmp_path: Path) -> None:
    toolchain = nightly()
    crate = project(tmp_path / "demo")
    rbd.env.pop("RUSTUP_TOOLCHAIN", None)
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    first = events.finished()
    assert first["outcome"] == "success"
    main = crate / "src" / "main.rs"
    saves = [rebuilt(events, main, f'fn main() {{ println!("{i}"); }}\n') for i in range(3)]
    # What each change is expected to be called, after the build it triggered.
    made: list[tuple[dict[str, Any], list[str]]] = [(saves[-1], [])]

    # A tune: the profile it sets, and the tune itself.
    assert "tune #1" in rbd.ok("tune", "apply", "debuginfo-line-tables", cwd=crate)
    tuned = events.finished()
    assert tuned["outcome"] == "success"
    made.append(
        (tuned, ['profile dev changed — debug (unset) → "line-tables-only"', "tune #1 applied"])
    )
    manifest = (crate / "Cargo.toml").read_text()
    # Cargo.lock gains a package: a path dependency (no network).
    manifest = manifest.replace("[dependencies]\n", '[dependencies]\nextra = { path = "extra" }\n')
    made.append(
        (rebuilt(events, crate / "Cargo.toml", manifest), ["Cargo.lock changed — `extra` added"])
    )
    manifest = manifest.replace('debug = "line-tables-only"', "debug = 0")
    made.append(
        (
            rebuilt(events, crate / "Cargo.toml", manifest),
            ['profile dev changed — debug "line-tables-only" → 0'],
        )
    )
    flags = '[build]\nrustflags = ["--cfg", "rbd_test"]\n'
    made.append(
        (
            rebuilt(events, crate / ".cargo" / "config.toml", flags),
            ["rustflags changed — (none) → `--cfg rbd_test`"],
        )
    )
    if toolchain is not None:
        # In 2 of 3 full CI runs here the daemon's `rustc -vV` of the nightly just chosen
        # timed out (10 s: conditions.VERSION_TIMEOUT_S) while its first build ran; alone,
        # and after the same earlier tests, it answered in 0.05 s (1.3 s with the page cache
        # dropped). What timed out is not pinned down; a timed-out query records the
        # version as unknown and is asked again at the next build. Started once here,
        # the nightly is what a developer who just switched to it has: a warm one.
        subprocess.run(["rustc", f"+{toolchain}", "-vV"], capture_output=True, timeout=60)
        toml = f'[toolchain]\nchannel = "{toolchain.removesuffix("-" + HOST)}"\n'
        made.append((rebuilt(events, crate / "rust-toolchain.toml", toml), ["rustc", "cargo"]))

    recorded = [
        rbd.request(protocol.SHOW, build_id=build["id"])["build"]["conditions"] for build, _ in made
    ]
    assert all(c is not None for c in recorded)
    assert recorded[0]["settings"] == {"command": "build", "args": [], "config": "default"}
    assert recorded[0]["lock_digest"] is not None and recorded[0]["tune"] is None
    store = Store(Path(rbd.store))
    try:
        assert ("extra", "0.3.0") in (store.lockfile(recorded[2]["lock_digest"]) or [])
        for i in range(1, len(made)):
            # The detector on made-up timings (a machine's noise cannot be relied on),
            # naming from the two real builds' conditions either side of the step.
            series = [stepped(n, recorded[i - 1], recorded[i]) for n in range(11, 0, -1)]
            trend = steps.trend(str(crate), series, store.lockfile)
            (step,) = trend["steps"]
            assert step["build_id"] == 6
            texts = [c["text"] for c in step["changes"]]
            expected = made[i][1]
            if expected == ["rustc", "cargo"]:
                assert [c["what"] for c in step["changes"]] == expected, texts
                # Seen once in CI under load: rustc's version unknown (its query failed);
                # the daemon's log says why.
                failed = [
                    line
                    for line in (rbd.base / "state" / "rbd" / "rbd.log").read_text().splitlines()
                    if "version_query_failed" in line
                ]
                assert "→ 1.9" in texts[0] and "-nightly" in texts[0], (texts, failed)
            else:
                assert texts == expected, (i, texts)
    finally:
        store.close()
    if toolchain is None:
        pytest.skip("no nightly toolchain installed: the toolchain change was not made")


def test_history_headline_is_fixed_and_changes_are_listed(rbd: Rbd, tmp_path: Path) -> None:
    crate = project(tmp_path / "demo")
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", cwd=crate)
    assert events.finished()["outcome"] == "success"
    for i in range(3):
        rebuilt(events, crate / "src" / "main.rs", f'fn main() {{ println!("{i}"); }}\n')
    heads = [
        [
            line
            for line in rbd.ok("history", "--limit", n, cwd=crate).splitlines()
            if "median" in line
        ]
        for n in ("1", "2", "20")
    ]
    # The headline's median is over the project's latest edit rebuilds, whatever --limit.
    assert heads[0] == heads[1] == heads[2] and heads[0][0].startswith("edit rebuilds: median")
    assert " over 3 " in heads[0][0]
    text = rbd.ok("history", "--changes", cwd=crate)
    assert text.splitlines()[0] == str(crate)
    assert "no step change in the last 3 edit rebuilds" in text
    (trend,) = json.loads(rbd.ok("history", "--changes", "--json", cwd=crate))
    assert trend["project"] == str(crate) and trend["steps"] == [] and trend["searched"] == 3
    assert len(trend["walls_s"]) == 3 and trend["median_s"] is not None
    # `history --json` is the list of builds it always was; the reply carries the trend.
    builds = json.loads(rbd.ok("history", "--json", cwd=crate))
    assert isinstance(builds, list) and len(builds) == 4
    reply = rbd.request(protocol.HISTORY, path=str(crate), limit=1)
    assert reply["trend"] == trend and reply["trends"] == {str(crate): trend}
    everything = rbd.request(protocol.HISTORY, all=True, limit=1)
    assert everything["trend"] is None and everything["trends"] == {str(crate): trend}
