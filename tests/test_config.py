"""Project settings: sources, precedence and validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from rbd.daemon.errors import ConfigError
from rbd.daemon.projects.settings import ProjectConfig, load


def test_defaults_build_with_json_messages(tmp_path: Path) -> None:
    (tmp_path / "Cargo.toml").write_text('[package]\nname = "a"\nversion = "0.1.0"\n')
    config = load(tmp_path, {}, {})
    assert config == ProjectConfig()
    assert config.argv() == ["cargo", "build", "--message-format=json", "--timings", "-v"]


def test_precedence_manifest_then_rbd_toml_then_env_then_options(tmp_path: Path) -> None:
    (tmp_path / "Cargo.toml").write_text(
        '[workspace]\n[workspace.metadata.rbd]\ncommand = "check"\nsettle_ms = 5\ntimeout_s = 9\n'
        '[package]\nname = "a"\nversion = "0.1.0"\n[package.metadata.rbd]\nsettle_ms = 7\n'
    )
    assert load(tmp_path, {}, {}).settle_ms == 7
    assert load(tmp_path, {}, {}).command == "check"
    (tmp_path / "rbd.toml").write_text('args = ["--bin", "x"]\nsettle_ms = 8\n')
    config = load(tmp_path, {"RBD_SETTLE_MS": "9", "RBD_COMMAND": "clippy"}, {})
    assert (config.command, config.args, config.settle_ms, config.timeout_s) == (
        "clippy",
        ("--bin", "x"),
        9,
        9.0,
    )
    config = load(tmp_path, {"RBD_SETTLE_MS": "9"}, {"settle_ms": 1, "args": ["-p", "y"]})
    assert config.settle_ms == 1 and config.args == ("-p", "y")


def test_test_and_bench_only_build(tmp_path: Path) -> None:
    assert ProjectConfig(command="test").argv()[:3] == ["cargo", "test", "--no-run"]
    assert ProjectConfig(command="test --no-run").argv().count("--no-run") == 1
    assert ProjectConfig(command="bench", args=("--no-run",)).argv().count("--no-run") == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"command": "run"}, "command must start with one of"),
        ({"command": ""}, "command must start with one of"),
        ({"args": "--message-format=short"}, "rbd sets --message-format itself"),
        ({"args": [1]}, "args must be a list of strings"),
        ({"settle_ms": -1}, "settle_ms must be an integer"),
        ({"settle_ms": True}, "settle_ms must be an integer"),
        ({"timeout_s": 0}, "timeout_s must be a positive number"),
        ({"colour": "blue"}, "unknown setting 'colour'"),
    ],
)
def test_bad_settings_are_refused_with_their_source(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        load(tmp_path, {}, values)
    assert "rbd start options" in str(caught.value)


def test_bad_env_and_rbd_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="RBD_SETTLE_MS must be an integer"):
        load(tmp_path, {"RBD_SETTLE_MS": "soon"}, {})
    (tmp_path / "rbd.toml").write_text("command = \n")
    with pytest.raises(ConfigError, match=r"rbd\.toml"):
        load(tmp_path, {}, {})


def test_broken_manifest_is_left_to_cargo(tmp_path: Path) -> None:
    (tmp_path / "Cargo.toml").write_text("[package\n")
    assert load(tmp_path, {}, {}) == ProjectConfig()


def test_run_mode_settings_from_every_layer(tmp_path: Path) -> None:
    (tmp_path / "Cargo.toml").write_text(
        '[package]\nname = "x"\nversion = "0.1.0"\n\n[package.metadata.rbd]\nrun = true\n'
        'run_args = ["--port", "0"]\nrun_env = { APP_MODE = "dev" }\n'
    )
    (tmp_path / "rbd.toml").write_text('listen = ["localhost:3000", "[::1]:3000"]\n')
    config = load(tmp_path, {"RBD_STOP_TIMEOUT_S": "2.5"}, {"run": "web"})
    assert config.run == "web"
    assert config.run_args == ("--port", "0")
    assert config.run_env == (("APP_MODE", "dev"),)
    assert config.listen == ("127.0.0.1:3000", "[::1]:3000")
    assert config.stop_timeout_s == 2.5
    assert config.to_json()["run_env"] == {"APP_MODE": "dev"}
    assert load(tmp_path, {"RBD_RUN": "0"}, {}).runs is False


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"run": True, "listen": ["0.0.0.0:3000"]}, "not local"),
        ({"run": True, "listen": ["127.0.0.1"]}, "not HOST:PORT"),
        ({"run": True, "listen": ["127.0.0.1:70000"]}, "1 to 65535"),
        ({"run": True, "listen": ["example.com:80"]}, "not an IP address"),
        ({"run": True, "listen": ["127.0.0.1:3000", "localhost:3000"]}, "twice"),
        ({"run": True, "command": "check"}, "run mode runs the binary"),
        ({"run": True, "ready_url": "/health"}, "needs `listen`"),
        ({"run": True, "ready_url": "http://10.1.2.3/"}, "not on this machine"),
        ({"run": True, "ready_pattern": "("}, "not valid"),
        ({"run": 3}, "run must be"),
        ({"run": True, "run_env": {"A": 1}}, "run_env"),
        ({"run": True, "stop_timeout_s": 0}, "stop_timeout_s"),
    ],
)
def test_bad_run_settings_are_refused(
    tmp_path: Path, values: dict[str, object], message: str
) -> None:
    (tmp_path / "Cargo.toml").write_text('[package]\nname = "x"\nversion = "0.1.0"\n')
    with pytest.raises(ConfigError, match=message):
        load(tmp_path, {}, dict(values))
