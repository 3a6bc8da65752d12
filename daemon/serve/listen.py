"""The listening sockets of a run-mode app: bound once by rbd, handed to every instance.

An app that takes its socket from rbd (the systemfd convention the `listenfd` crate
reads: fds from 3, `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) never closes the port:
while one instance stops and the next starts, connections wait in the kernel's backlog
and the new instance accepts them. Only loopback addresses are taken: rbd runs a
development server for this machine, never one reachable from the network.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import socket
from urllib.parse import urlsplit

from rbd.daemon.errors import ConfigError

# More would be a configuration mistake; the bound keeps the fds handed over small.
MAX_SOCKETS = 16
# The held sockets' fds are moved at or above this, so that placing them at 3, 4, ...
# in the app (one dup2 each) can never overwrite one not yet placed.
HELD_FD_MIN = 3 + MAX_SOCKETS
# Connections made while no instance accepts wait here (the kernel caps it at somaxconn).
BACKLOG = 1024


def _split(text: str) -> tuple[str, str]:
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port:
        raise ConfigError(
            f"listen address {text!r} is not HOST:PORT (e.g. 127.0.0.1:3000 or [::1]:3000)"
        )
    return host, port


def parse(text: str) -> tuple[str, int]:
    """(host, port) of a listen address; raises ConfigError unless it is a loopback
    IP literal or `localhost` (taken as 127.0.0.1) with a port from 1 to 65535."""
    host, port_text = _split(text)
    if host == "localhost":
        host = "127.0.0.1"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"listen address {text!r}: {host!r} is not an IP address (use 127.0.0.1 or [::1])"
        ) from None
    if not address.is_loopback:
        raise ConfigError(
            f"listen address {text!r} is not local: rbd serves a development server to this "
            "machine only (use 127.0.0.1 or [::1])"
        )
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"listen address {text!r}: the port must be a number from 1 to 65535")
    return str(address), int(port_text)


def normalize(text: str) -> str:
    """A listen address in the one spelling rbd shows (`127.0.0.1:3000`, `[::1]:3000`)."""
    host, port = parse(text)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_url(url: str) -> None:
    """A ready_url must reach this machine over plain HTTP; raises ConfigError."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme != "http" or not parts.hostname or port == -1:
        raise ConfigError(f"ready_url {url!r} is not a plain http://HOST[:PORT]/PATH URL")
    host = parts.hostname
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    if not local:
        raise ConfigError(f"ready_url {url!r} is not on this machine (use 127.0.0.1 or [::1])")


class Listeners:
    """Bound, listening sockets for a project's app, in the order `listen` names them.

    Raises ConfigError when an address cannot be bound: in use by another process
    (another server, or a second project naming the same port), or not available here.
    """

    def __init__(self, addresses: tuple[str, ...], reuse: Listeners | None = None) -> None:
        self.addresses = addresses
        self._sockets: list[socket.socket] = []
        kept = {} if reuse is None else dict(zip(reuse.addresses, reuse._sockets, strict=True))
        try:
            for text in addresses:
                held = kept.pop(text, None)
                self._sockets.append(held if held is not None else _bind(text))
        except BaseException:
            self._close_new(reuse)
            raise
        # What the new set does not keep of the old one is closed: its port is freed.
        for sock in kept.values():
            sock.close()
        if reuse is not None:
            reuse._sockets = []

    def _close_new(self, reuse: Listeners | None) -> None:
        old = set() if reuse is None else {id(s) for s in reuse._sockets}
        for sock in self._sockets:
            if id(sock) not in old:
                sock.close()
        self._sockets = []

    @property
    def fds(self) -> list[int]:
        return [sock.fileno() for sock in self._sockets]

    @property
    def names(self) -> str:
        """LISTEN_FDNAMES: one name per fd, colon-separated (the address, its colons
        replaced, since the convention reserves `:`)."""
        return ":".join(a.replace(":", "_") for a in self.addresses)

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []


def _bind(text: str) -> socket.socket:
    host, port = parse(text)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # A port in TIME_WAIT from the app's last run must not refuse the bind; a port
        # another process listens on still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        held = fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, HELD_FD_MIN)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"{text} is already in use by another process (another server, or another "
                f"watched project); `ss -ltnp 'sport = :{port}'` shows which"
            ) from None
        raise ConfigError(f"cannot listen on {text}: {exc.strerror or exc}") from None
    # The original fd is closed; the listening socket lives on in the moved one.
    sock.close()
    return socket.socket(family, socket.SOCK_STREAM, fileno=held)
