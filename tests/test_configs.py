"""Build configurations, built with real cargo on tiny crates: each links with the linker it
names, lands in target/rbd/<name>, keeps the user's rustflags and leaves the user's own
target dir fresh. Cranelift is only checked for the command it produces (and, where a
nightly toolchain exists, that nightly cargo accepts it): no toolchain here has its backend.
wild links for real where it is installed, parallel-frontend builds with the nightly
where there is one; each test that needs them skips with the reason otherwise."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import anyio
import pytest

from rbd.daemon.advice import probe
from rbd.daemon.build import configurations
from rbd.daemon.build.linker import identify
from rbd.daemon.errors import ConfigError, Unavailable
from rbd.daemon.projects.settings import ProjectConfig
from tests.conftest import Rbd, make_crate

CARGO_TIMEOUT_S = 120
# Variables of the developer's shell that would change what these builds do.
FOREIGN = ("RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_TARGET_DIR")
# Fails to compile unless the user's `--cfg rbd_user` reaches rustc.
NEEDS_USER_FLAG = (
    "#![allow(unexpected_cfgs)]\n"
    '#[cfg(not(rbd_user))]\ncompile_error!("the user\'s rustflags were dropped");\n'
    "fn main() {}\n"
)
needs_mold = pytest.mark.skipif(shutil.which("ld.mold") is None, reason="mold is not installed")
WILD = probe.wild_program(dict(os.environ))
needs_wild = pytest.mark.skipif(
    WILD is None, reason="wild is not installed: cargo install --locked wild-linker"
)


@pytest.fixture(scope="module")
def host() -> str:
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(line.split()[1] for line in out.splitlines() if line.startswith("host:"))


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in FOREIGN and not (k.startswith("CARGO_TARGET_") and k.endswith("_RUSTFLAGS"))
    }
    return {**env, **extra}


def run(argv: list[str], crate: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, cwd=crate, env=env, capture_output=True, text=True, timeout=CARGO_TIMEOUT_S
    )
    assert done.returncode == 0, f"{argv}\n{done.stderr[-3000:]}"
    return done


def resolve(name: str, crate: Path, env: dict[str, str], host: str) -> configurations.BuildConfig:
    return configurations.resolve(name, crate, crate / "target", env, host, None)


def build(config: configurations.BuildConfig, crate: Path, env: dict[str, str]) -> str:
    """Builds with the command the daemon would run; cargo's -v output."""
    assert config.available, config.reason
    argv = config.argv(ProjectConfig().argv())
    return run(argv, crate, config.apply_env(env)).stderr


def assert_user_tree_fresh(crate: Path, env: dict[str, str]) -> None:
    err = run(["cargo", "build", "-v"], crate, env).stderr
    assert "Dirty" not in err and "Compiling" not in err, err


@needs_mold
def test_mold_and_line_tables_only_build_aside(tmp_path: Path, host: str) -> None:
    crate = make_crate(tmp_path / "demo")
    env = clean_env()
    run(["cargo", "build"], crate, env)

    mold = resolve("mold", crate, env, host)
    build(mold, crate, env)
    assert mold.target_dir == crate / "target" / "rbd" / "mold"
    assert mold.artifacts() == crate / "target" / "rbd" / "mold" / "debug"
    assert identify(crate / "target" / "rbd" / "mold" / "debug" / "demo") == "mold"

    lines = resolve("line-tables-only", crate, env, host)
    err = build(lines, crate, env)
    assert "-C debuginfo=line-tables-only" in err
    assert (crate / "target" / "rbd" / "line-tables-only" / "debug" / "demo").is_file()

    assert_user_tree_fresh(crate, env)


@needs_mold
def test_combination(tmp_path: Path, host: str) -> None:
    crate = make_crate(tmp_path / "demo")
    env = clean_env()
    run(["cargo", "build"], crate, env)
    config = resolve("line-tables-only+mold", crate, env, host)
    assert config.name == "mold+line-tables-only"
    err = build(config, crate, env)
    assert "-C debuginfo=line-tables-only" in err
    binary = crate / "target" / "rbd" / "mold+line-tables-only" / "debug" / "demo"
    assert config.artifacts() == binary.parent
    assert identify(binary) == "mold"
    assert_user_tree_fresh(crate, env)


@pytest.mark.parametrize(("name", "program"), [("lld", "ld.lld"), ("bfd", "ld.bfd")])
def test_other_linkers(tmp_path: Path, host: str, name: str, program: str) -> None:
    if shutil.which(program) is None:
        pytest.skip(f"{program} is not installed")
    crate = make_crate(tmp_path / "demo")
    env = clean_env()
    config = resolve(name, crate, env, host)
    build(config, crate, env)
    # "lld" is the system's ld.lld, not rustc's bundled one.
    assert identify(crate / "target" / "rbd" / name / "debug" / "demo") == name


def test_no_debuginfo_and_deps_opt(tmp_path: Path, host: str) -> None:
    # A path dependency outside the workspace is not a member: "*" covers it.
    make_crate(tmp_path / "dep", "dep", {"src/lib.rs": "pub fn f() {}\n"})
    (tmp_path / "dep" / "src" / "main.rs").unlink()
    crate = make_crate(tmp_path / "app", "app", {"src/main.rs": "fn main() { dep::f(); }\n"})
    with (crate / "Cargo.toml").open("a") as f:
        f.write('[dependencies]\ndep = { path = "../dep" }\n')
    env = clean_env()
    config = resolve("deps-opt+no-debuginfo", crate, env, host)
    assert config.name == "no-debuginfo+deps-opt"
    err = build(config, crate, env)
    rustc = {
        line.split("--crate-name ")[1].split()[0]: line
        for line in err.splitlines()
        if "Running" in line and "--crate-name" in line
    }
    assert "opt-level=1" in rustc["dep"] and "opt-level" not in rustc["app"]
    # debuginfo 0 is rustc's default: cargo passes no -C debuginfo at all.
    assert "-C debuginfo" not in rustc["dep"] + rustc["app"]
    assert (crate / "target" / "rbd" / "no-debuginfo+deps-opt" / "debug" / "app").is_file()


@needs_mold
@pytest.mark.parametrize(
    ("variables", "cargo_config"),
    [
        ({"RUSTFLAGS": "--cfg rbd_user"}, None),
        ({"CARGO_ENCODED_RUSTFLAGS": "--cfg\x1frbd_user"}, None),
        ({}, '[build]\nrustflags = ["--cfg", "rbd_user"]\n'),
        ({}, '[target.HOST]\nrustflags = "--cfg rbd_user"\n'),
        ({}, '[target.\'cfg(all())\']\nrustflags = ["--cfg", "rbd_user"]\n'),
        ({"CARGO_BUILD_RUSTFLAGS": "--cfg rbd_user"}, None),
    ],
    ids=["RUSTFLAGS", "encoded", "build.rustflags", "target.host string", "target.cfg", "env"],
)
def test_user_rustflags_carried_over(
    tmp_path: Path, host: str, variables: dict[str, str], cargo_config: str | None
) -> None:
    files = {"src/main.rs": NEEDS_USER_FLAG}
    if cargo_config:
        files[".cargo/config.toml"] = cargo_config.replace("HOST", host)
    crate = make_crate(tmp_path / "demo", files=files)
    env = clean_env(**variables)
    config = resolve("mold", crate, env, host)
    build(config, crate, env)
    assert identify(crate / "target" / "rbd" / "mold" / "debug" / "demo") == "mold"


def test_rustflags_it_cannot_place(tmp_path: Path, host: str) -> None:
    config_toml = (
        '[build]\nrustflags = ["--cfg", "a"]\n'
        '[target.\'cfg(windows)\']\nrustflags = ["--cfg", "b"]\n'
    )
    crate = make_crate(tmp_path / "demo", files={".cargo/config.toml": config_toml})
    env = clean_env(PATH=os.defpath + ":" + str(tmp_path / "bin"))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "ld.bfd").symlink_to("/bin/true")
    config = resolve("bfd", crate, env, host)
    assert not config.available
    assert config.reason and "target.'cfg(..)'" in config.reason
    assert str(crate / ".cargo" / "config.toml") in config.reason


def test_rustflags_env_shapes(tmp_path: Path) -> None:
    host = "x86_64-unknown-linux-gnu"
    ours = configurations.linker_flags("mold", host)
    assert ours == ["-Clinker-features=-lld", "-Clink-arg=-fuse-ld=mold"]
    assert configurations.linker_flags("mold", "aarch64-unknown-linux-gnu") == [
        "-Clink-arg=-fuse-ld=mold"
    ]
    crate = make_crate(tmp_path / "demo")
    got, _ = configurations.rustflags_env(ours, crate, {"RUSTFLAGS": " -Ca  -Cb "}, host)
    assert got == {"CARGO_ENCODED_RUSTFLAGS": "-Ca\x1f-Cb\x1f" + "\x1f".join(ours)}
    # Set but empty means no flags, and still wins over the config files.
    got, _ = configurations.rustflags_env(ours, crate, {"CARGO_ENCODED_RUSTFLAGS": ""}, host)
    assert got == {"CARGO_ENCODED_RUSTFLAGS": "\x1f".join(ours)}
    key = "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS"
    got, _ = configurations.rustflags_env(ours, crate, {key: "-Cuser"}, host)
    assert got == {key: "-Cuser " + " ".join(ours)}


def test_unavailable_linkers(tmp_path: Path, host: str) -> None:
    # A PATH with cargo, rustc and a C compiler but no linker of its own.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("cargo", "rustc", "cc"):
        found = shutil.which(program)
        assert found is not None
        (bin_dir / program).symlink_to(found)
    crate = make_crate(tmp_path / "demo")
    env = clean_env(PATH=str(bin_dir))
    hints = {
        "mold": "mold is not installed: apt-get install mold",
        "lld": "apt-get install lld",
        "bfd": "apt-get install binutils",
    }
    for name, hint in hints.items():
        config = resolve(name, crate, env, host)
        assert not config.available and config.reason and hint in config.reason
        with pytest.raises(Unavailable, match=hint):
            config.require()
    both = resolve("mold+line-tables-only", crate, env, host)
    assert not both.available and both.reason == hints["mold"]
    elsewhere = resolve("mold", crate, clean_env(), "aarch64-apple-darwin")
    assert not elsewhere.available and elsewhere.reason and "Linux" in elsewhere.reason
    assert resolve("line-tables-only", crate, env, host).available


def test_cranelift_without_nightly(tmp_path: Path, host: str) -> None:
    config = resolve("cranelift", tmp_path, clean_env(), host)
    assert not config.available
    assert config.reason == configurations.CRANELIFT_HINT
    assert "rustup component add rustc-codegen-cranelift-preview --toolchain nightly" in (
        config.reason
    )


def test_cranelift_command(tmp_path: Path, host: str) -> None:
    target = tmp_path / "target"
    config = configurations.resolve(
        "line-tables-only+cranelift", tmp_path, target, clean_env(), host, "nightly"
    )
    assert config.available and config.reason is None
    assert config.name == "line-tables-only+cranelift"
    base = ProjectConfig().argv()
    assert config.argv(base) == [
        "cargo",
        "+nightly",
        "build",
        "--config",
        'profile.dev.debug="line-tables-only"',
        "-Zcodegen-backend",
        "--config",
        'profile.rbd-cranelift.inherits="dev"',
        "--config",
        'profile.rbd-cranelift.codegen-backend="cranelift"',
        "--profile",
        "rbd-cranelift",
        "--target-dir",
        str(target / "rbd" / "line-tables-only+cranelift"),
        "--message-format=json",
        "--timings",
        "-v",
    ]
    assert config.env == {}
    assert config.artifacts() == target / "rbd" / "line-tables-only+cranelift" / "rbd-cranelift"


def _has_nightly() -> bool:
    if shutil.which("rustup") is None:
        return False
    out = subprocess.run(["rustup", "toolchain", "list"], capture_output=True, text=True).stdout
    return any(line.startswith("nightly") for line in out.splitlines())


@pytest.mark.skipif(not _has_nightly(), reason="no nightly toolchain")
def test_nightly_cargo_accepts_the_cranelift_profile(tmp_path: Path, host: str) -> None:
    crate = make_crate(tmp_path / "demo")
    env = clean_env()
    config = configurations.resolve("cranelift", crate, crate / "target", env, host, "nightly")
    done = subprocess.run(
        config.argv(["cargo", "build", "-v"]),
        cwd=crate,
        env=config.apply_env(env),
        capture_output=True,
        text=True,
        timeout=CARGO_TIMEOUT_S,
    )
    # Cargo accepted the profile and handed the backend to rustc; without the component
    # rustc then stops. Either way this is not a cranelift build that ran.
    assert "-Z codegen-backend=cranelift" in done.stderr, done.stderr[-3000:]
    assert done.returncode == 0 or "codegen-backends" in done.stderr, done.stderr[-3000:]


def test_default_changes_nothing(tmp_path: Path, host: str) -> None:
    config = resolve("default", tmp_path, clean_env(), host)
    base = ProjectConfig(args=("--bin", "x")).argv()
    assert config.available and config.argv(base) == base
    assert config.apply_env({"A": "1"}) == {"A": "1"}
    assert config.target_dir is None and config.artifacts() is None


def test_argv_keeps_dash_dash_and_replaces_target_dir(tmp_path: Path, host: str) -> None:
    config = resolve("no-debuginfo", tmp_path, clean_env(), host)
    base = ["cargo", "clippy", "--target-dir", "elsewhere", "--target-dir=x", "--", "-D", "w"]
    assert config.argv(base) == [
        "cargo",
        "clippy",
        "--config",
        'profile.dev.debug="none"',
        "--target-dir",
        str(tmp_path / "target" / "rbd" / "no-debuginfo"),
        "--",
        "-D",
        "w",
    ]


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("gold", "known are default, mold, lld, bfd"),
        ("", "unknown build configuration"),
        ("Mold", "unknown build configuration 'Mold'"),
        ("mold+lld", "at most one linker"),
        ("line-tables-only+no-debuginfo", "at most one debuginfo"),
        ("wild+mold", "at most one linker"),
        ("split-debuginfo+no-debuginfo", "no debuginfo to split"),
        ("mold+mold", "named twice"),
        ("default+mold", "default cannot be combined"),
        ("mold+", "unknown build configuration ''"),
    ],
)
def test_bad_names(tmp_path: Path, host: str, name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        resolve(name, tmp_path, clean_env(), host)


def test_names() -> None:
    assert configurations.NAMES == (
        "default",
        "mold",
        "lld",
        "bfd",
        "wild",
        "line-tables-only",
        "no-debuginfo",
        "split-debuginfo",
        "deps-opt",
        "cranelift",
        "parallel-frontend",
        "sccache",
    )


@needs_wild
def test_wild_links_through_a_directory_that_outlives_the_target_dir(
    tmp_path: Path, host: str
) -> None:
    crate = make_crate(tmp_path / "demo")
    env = clean_env()
    run(["cargo", "build"], crate, env)
    tools = tmp_path / "tools"
    config = configurations.resolve(
        "wild", crate, crate / "target", env, host, None, tools_dir=tools
    )
    assert config.available, config.reason
    build(config, crate, env)
    assert identify(crate / "target" / "rbd" / "wild" / "debug" / "demo") == "wild"
    assert (tools / "wild" / "ld").resolve() == Path(str(WILD)).resolve()
    assert not (crate / "target" / "rbd" / "wild" / "ld").exists()
    assert_user_tree_fresh(crate, env)


def test_wild_directory_is_repointed_atomically(tmp_path: Path) -> None:
    first, second = tmp_path / "a" / "wild", tmp_path / "b" / "wild"
    for program in (first, second):
        program.parent.mkdir()
        program.write_text("")
    directory = configurations.wild_dir(str(first), tmp_path / "tools")
    assert os.readlink(directory / "ld") == str(first)
    assert configurations.wild_dir(str(second), tmp_path / "tools") == directory
    assert os.readlink(directory / "ld") == str(second)
    assert sorted(p.name for p in directory.iterdir()) == ["ld"]


def test_wild_flags_and_combinations(tmp_path: Path, host: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "wild").write_text("#!/bin/sh\n")
    (bin_dir / "wild").chmod(0o755)
    env = clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}")
    tools = tmp_path / "tools"
    config = configurations.resolve(
        "line-tables-only+wild",
        tmp_path,
        tmp_path / "target",
        env,
        "x86_64-unknown-linux-gnu",
        None,
        tools_dir=tools,
    )
    assert config.name == "wild+line-tables-only" and config.available
    assert config.env == {
        "CARGO_ENCODED_RUSTFLAGS": f"-Clinker-features=-lld\x1f-Clink-arg=-B{tools / 'wild'}"
    }
    # Elsewhere on Linux gcc's default ld is asked for: the -B directory alone does it.
    assert configurations.wild_flags(tools, "aarch64-unknown-linux-gnu") == [
        f"-Clink-arg=-B{tools}"
    ]


def test_wild_not_installed_says_how_to_install(tmp_path: Path, host: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # Neither on PATH nor where cargo install puts it.
    env = clean_env(PATH=str(bin_dir), CARGO_HOME=str(tmp_path / "cargo"))
    config = resolve("wild+split-debuginfo", tmp_path, env, host)
    assert not config.available and config.reason == configurations.WILD_HINT
    assert "cargo install --locked wild-linker" in config.reason and "\n" not in config.reason
    (tmp_path / "cargo" / "bin").mkdir(parents=True)
    (tmp_path / "cargo" / "bin" / "wild").write_text("#!/bin/sh\n")
    (tmp_path / "cargo" / "bin" / "wild").chmod(0o755)
    assert probe.wild_program(env) == str(tmp_path / "cargo" / "bin" / "wild")


def test_split_debuginfo_keeps_debuginfo_in_dwo_files(tmp_path: Path, host: str) -> None:
    crate = make_crate(tmp_path / "demo")
    env = clean_env()
    run(["cargo", "build"], crate, env)
    config = resolve("split-debuginfo+line-tables-only", crate, env, host)
    assert config.name == "line-tables-only+split-debuginfo" and config.env == {}
    err = build(config, crate, env)
    assert "-C split-debuginfo=unpacked" in err and "-C debuginfo=line-tables-only" in err
    out = crate / "target" / "rbd" / "line-tables-only+split-debuginfo"
    assert (out / "debug" / "demo").is_file()
    assert list(out.rglob("*.dwo")), "no .dwo files"
    assert_user_tree_fresh(crate, env)


def test_parallel_frontend_command(tmp_path: Path, host: str) -> None:
    target = tmp_path / "target"
    env = clean_env()
    config = configurations.resolve(
        "parallel-frontend", tmp_path, target, env, host, None, nightly="nightly", cores=4
    )
    assert config.available and config.toolchain == "nightly"
    assert config.env == {"CARGO_ENCODED_RUSTFLAGS": "-Zthreads=4"}
    assert config.argv(["cargo", "build"]) == [
        "cargo", "+nightly", "build", "--target-dir", str(target / "rbd" / "parallel-frontend"),
    ]  # fmt: skip
    missing = configurations.resolve("parallel-frontend", tmp_path, target, env, host, None)
    assert not missing.available and missing.reason == configurations.PARALLEL_HINT
    assert "rustup toolchain install nightly" in missing.reason
    one = configurations.resolve(
        "parallel-frontend", tmp_path, target, env, host, None, nightly="nightly", cores=1
    )
    assert not one.available and one.reason and "one CPU" in one.reason


@needs_mold
def test_parallel_frontend_and_a_linker_share_one_rustflags_setting(
    tmp_path: Path, host: str
) -> None:
    env = clean_env(RUSTFLAGS="--cfg rbd_user")
    config = configurations.resolve(
        "parallel-frontend+mold", tmp_path, tmp_path / "t", env, host, None, nightly="n", cores=2
    )
    assert config.name == "mold+parallel-frontend"
    assert config.env["CARGO_ENCODED_RUSTFLAGS"].split("\x1f") == [
        "--cfg", "rbd_user", *configurations.linker_flags("mold", host), "-Zthreads=2",
    ]  # fmt: skip


@pytest.mark.skipif(not _has_nightly(), reason="no nightly toolchain")
def test_parallel_frontend_builds_with_the_nightly(tmp_path: Path, host: str) -> None:
    crate = make_crate(tmp_path / "demo")
    env = clean_env()
    run(["cargo", "build"], crate, env)
    (config,) = anyio.run(
        configurations.for_machine, ["parallel-frontend"], crate, crate / "target", env
    )
    assert config.available, config.reason
    assert config.toolchain is not None and config.toolchain.startswith("nightly")
    err = build(config, crate, env)
    threads = f"-Zthreads={probe.available_cores()}"
    assert any("--crate-name demo" in line and threads in line for line in err.splitlines()), err
    assert (crate / "target" / "rbd" / "parallel-frontend" / "debug" / "demo").is_file()
    # The user's own builds stay on their toolchain and their target dir stays fresh.
    assert_user_tree_fresh(crate, env)


@needs_wild
def test_the_daemon_builds_with_wild_and_records_it(rbd: Rbd, tmp_path: Path) -> None:
    crate = make_crate(tmp_path / "demo")
    rbd.start_daemon()
    events = rbd.events()
    rbd.ok("start", "--config", "split-debuginfo+wild", cwd=crate)
    build = events.finished(timeout=CARGO_TIMEOUT_S)
    assert build["outcome"] == "success" and build["config"] == "wild+split-debuginfo"
    # Read from the binary (daemon.build.linker): wild's mark, not GNU ld's silence.
    assert build["linker"] == "wild"
    assert (crate / "target" / "rbd" / "wild+split-debuginfo" / "debug" / "demo").is_file()
