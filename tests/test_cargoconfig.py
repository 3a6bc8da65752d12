"""Reading the cargo configuration a project's build sees."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from rbd.daemon.build import cargo_config


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_closest_file_wins_and_cargo_home_comes_last(tmp_path: Path) -> None:
    project = tmp_path / "outer" / "project"
    home = tmp_path / "cargo-home"
    write(home / "config.toml", '[build]\nrustc-wrapper = "from-home"\njobs = 1\n')
    write(tmp_path / "outer" / ".cargo" / "config.toml", '[build]\nrustc-wrapper = "outer"\n')
    write(project / ".cargo" / "config.toml", "[build]\ntarget-dir = 'x'\n")
    env = {"CARGO_HOME": str(home)}
    files = cargo_config.load(project, env)
    assert [f.path for f in files][-1] == home / "config.toml"
    assert cargo_config.rustc_wrapper(project, env) == "outer"
    jobs = cargo_config.lookup(files, "build", "jobs")
    assert jobs is not None and jobs[0] == 1


def test_the_old_config_name_wins_in_the_same_directory(tmp_path: Path) -> None:
    write(tmp_path / ".cargo" / "config", '[build]\nrustc-wrapper = "old"\n')
    write(tmp_path / ".cargo" / "config.toml", '[build]\nrustc-wrapper = "new"\n')
    assert cargo_config.rustc_wrapper(tmp_path, {"CARGO_HOME": str(tmp_path / "h")}) == "old"


def test_a_wrapper_path_is_relative_to_the_directory_holding_dot_cargo(tmp_path: Path) -> None:
    project = tmp_path / "ws" / "member"
    project.mkdir(parents=True)
    write(tmp_path / "ws" / ".cargo" / "config.toml", '[build]\nrustc-wrapper = "tools/wrap"\n')
    env = {"CARGO_HOME": str(tmp_path / "h")}
    assert cargo_config.rustc_wrapper(project, env) == str(tmp_path / "ws" / "tools" / "wrap")


def test_the_environment_overrides_files_and_empty_means_none(tmp_path: Path) -> None:
    write(tmp_path / ".cargo" / "config.toml", '[build]\nrustc-wrapper = "sccache"\n')
    env = {"CARGO_HOME": str(tmp_path / "h")}
    assert cargo_config.rustc_wrapper(tmp_path, env) == "sccache"
    assert cargo_config.rustc_wrapper(tmp_path, {**env, "CARGO_BUILD_RUSTC_WRAPPER": "b"}) == "b"
    both = {**env, "CARGO_BUILD_RUSTC_WRAPPER": "b", "RUSTC_WRAPPER": "a"}
    assert cargo_config.rustc_wrapper(tmp_path, both) == "a"
    assert cargo_config.rustc_wrapper(tmp_path, {**env, "RUSTC_WRAPPER": ""}) is None


def test_a_file_that_does_not_parse_is_skipped_with_a_warning(tmp_path: Path) -> None:
    write(tmp_path / "p" / ".cargo" / "config.toml", "[build\n")
    write(tmp_path / ".cargo" / "config.toml", '[build]\nrustc-wrapper = "kept"\n')
    with capture_logs() as logs:
        wrapper = cargo_config.rustc_wrapper(tmp_path / "p", {"CARGO_HOME": str(tmp_path / "h")})
    assert wrapper == "kept"
    assert [e["event"] for e in logs] == ["cargo_config_unreadable"]
