"""Which bin run mode runs: the way `cargo run` chooses it."""

from __future__ import annotations

import pytest

from rbd.daemon.errors import ConfigError
from rbd.daemon.serve import bins


def test_named_only_default_run_or_an_error_listing_the_bins() -> None:
    assert bins.choose("api", ("api", "worker"), None) == "api"
    assert bins.choose(True, ("web",), None) == "web"
    assert bins.choose(True, ("api", "worker"), "worker") == "worker"
    # Unknown bins (cargo metadata failed): the build's executables decide.
    assert bins.choose(True, (), None) is None
    with pytest.raises(ConfigError, match=r"bins: api, worker"):
        bins.choose(True, ("worker", "api"), None)
    with pytest.raises(ConfigError, match=r"no bin named 'nope'.*bins: api"):
        bins.choose("nope", ("api",), None)


def test_the_executable_is_the_one_the_build_reported() -> None:
    made = {"web": "/t/debug/web"}
    assert bins.executable("web", made) == "/t/debug/web"
    assert bins.executable(None, made) == "/t/debug/web"
    with pytest.raises(ConfigError, match="did not make bin 'api'"):
        bins.executable("api", made)
    with pytest.raises(ConfigError, match="cannot tell which bin"):
        bins.executable(None, {"a": "/a", "b": "/b"})
