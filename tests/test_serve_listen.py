"""The sockets run mode holds: parsed, bound once, kept across settings updates."""

from __future__ import annotations

import socket

import pytest

from rbd.daemon.errors import ConfigError
from rbd.daemon.serve import listen


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_addresses_are_loopback_and_spelled_one_way() -> None:
    assert listen.normalize("localhost:80") == "127.0.0.1:80"
    assert listen.normalize("[::1]:8080") == "[::1]:8080"
    assert listen.normalize("127.0.0.2:1") == "127.0.0.2:1"
    for bad in ("0.0.0.0:80", "[::]:80", "192.168.1.2:80", ":80", "127.0.0.1:", "127.0.0.1:x"):
        with pytest.raises(ConfigError):
            listen.parse(bad)


def test_bound_once_and_handed_over_at_high_fds_and_a_port_in_use_is_refused() -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    held = listen.Listeners((address,))
    try:
        (fd,) = held.fds
        assert fd >= listen.HELD_FD_MIN
        # Connections wait in the backlog while no instance accepts.
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        with pytest.raises(ConfigError, match="already in use"):
            listen.Listeners((address,))
        # Same address again, plus another: the held socket is kept, not re-bound.
        other = f"127.0.0.1:{free_port()}"
        both = listen.Listeners((address, other), reuse=held)
        assert both.fds[0] == fd
        assert both.names == f"127.0.0.1_{port}:{other.replace(':', '_')}"
        # Dropping an address frees its port.
        only = listen.Listeners((other,), reuse=both)
        listen.Listeners((address,)).close()
        only.close()
    finally:
        held.close()
