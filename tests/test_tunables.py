"""The daemon's bounds set by its environment: read once, and a bad one refuses to start it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rbd.daemon import tunables
from rbd.daemon.errors import ConfigError
from tests.conftest import Rbd

ENVS = (
    tunables.HELLO_TIMEOUT_ENV,
    tunables.LINE_TIMEOUT_ENV,
    tunables.MAX_CONNECTIONS_ENV,
    tunables.SUBSCRIBER_BUFFER_ENV,
)


def test_defaults_and_values() -> None:
    defaults = tunables.read({})
    assert defaults.hello_timeout_s == defaults.line_timeout_s == 10.0
    assert 1 <= defaults.max_connections <= tunables.DEFAULT_MAX_CONNECTIONS
    assert defaults.subscriber_buffer == 2048
    assert tunables.read({name: " " for name in ENVS}) == defaults
    set_ = tunables.read(
        {
            tunables.HELLO_TIMEOUT_ENV: "0.5",
            tunables.LINE_TIMEOUT_ENV: " 2 ",
            tunables.MAX_CONNECTIONS_ENV: "8",
            tunables.SUBSCRIBER_BUFFER_ENV: "16",
        }
    )
    assert (set_.hello_timeout_s, set_.line_timeout_s) == (0.5, 2.0)
    assert (set_.max_connections, set_.subscriber_buffer) == (8, 16)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (tunables.HELLO_TIMEOUT_ENV, "soon"),
        (tunables.HELLO_TIMEOUT_ENV, "nan"),
        (tunables.LINE_TIMEOUT_ENV, "0"),
        (tunables.LINE_TIMEOUT_ENV, "1e9"),
        (tunables.MAX_CONNECTIONS_ENV, "0"),
        (tunables.MAX_CONNECTIONS_ENV, "2.5"),
        (tunables.MAX_CONNECTIONS_ENV, str(1 << 20)),
        (tunables.SUBSCRIBER_BUFFER_ENV, "-1"),
    ],
)
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        tunables.read({name: value})


@pytest.mark.parametrize("name", [tunables.LINE_TIMEOUT_ENV, tunables.MAX_CONNECTIONS_ENV])
def test_a_bad_value_keeps_the_daemon_from_starting(rbd: Rbd, tmp_path: Path, name: str) -> None:
    done = rbd.run("daemon", env={**rbd.env, name: "many"})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbd daemon: ") and name in lines[0], lines
    assert not os.path.exists(rbd.socket)
