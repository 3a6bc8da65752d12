"""The daemon's bounds that its environment may set, read once when it starts.

They exist so that tests need not wait 10 s or send 2048 events; a value that is
not valid refuses to start the daemon (one line on stderr, `rbd daemon: ...`)
rather than silently using the default:

    RBD_HELLO_TIMEOUT_S     seconds, MIN_TIMEOUT_S..MAX_TIMEOUT_S      (default 10)
    RBD_LINE_TIMEOUT_S      seconds, MIN_TIMEOUT_S..MAX_TIMEOUT_S      (default 10)
    RBD_MAX_CONNECTIONS     an integer, 1..MAX_MAX_CONNECTIONS         (default below)
    RBD_SUBSCRIBER_BUFFER   an integer, 1..MAX_SUBSCRIBER_BUFFER       (default 2048)

What each bound does is the server's (rbd.daemon.rpc.server) and the event hub's
(rbd.daemon.rpc.events) to say.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass

from rbd.daemon.errors import ConfigError

HELLO_TIMEOUT_ENV = "RBD_HELLO_TIMEOUT_S"
LINE_TIMEOUT_ENV = "RBD_LINE_TIMEOUT_S"
MAX_CONNECTIONS_ENV = "RBD_MAX_CONNECTIONS"
SUBSCRIBER_BUFFER_ENV = "RBD_SUBSCRIBER_BUFFER"

DEFAULT_TIMEOUT_S = 10.0
MIN_TIMEOUT_S = 0.05
MAX_TIMEOUT_S = 3600.0
DEFAULT_MAX_CONNECTIONS = 256
# Each connection may buffer a line of up to MAX_REQUEST_BYTES: this many would be 64 GB.
MAX_MAX_CONNECTIONS = 65536
SUBSCRIBER_BUFFER = 2048
# A buffer this large would let one stuck `rbd tail` hold gigabytes of events.
MAX_SUBSCRIBER_BUFFER = 1 << 20


@dataclass(frozen=True)
class Tunables:
    # A client that has not said hello by then is gone or hostile.
    hello_timeout_s: float = DEFAULT_TIMEOUT_S
    # A line begun and not finished by then: a slowloris, or a client that forgot the newline.
    line_timeout_s: float = DEFAULT_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # Events buffered per subscriber before it counts as not reading.
    subscriber_buffer: int = SUBSCRIBER_BUFFER


def read(env: Mapping[str, str] | None = None) -> Tunables:
    """The bounds the environment (default: this process's) asks for.

    Raises ConfigError, naming the variable, for a value that is not valid.
    """
    env = os.environ if env is None else env
    return Tunables(
        hello_timeout_s=seconds(HELLO_TIMEOUT_ENV, env),
        line_timeout_s=seconds(LINE_TIMEOUT_ENV, env),
        max_connections=max_connections(env),
        subscriber_buffer=subscriber_buffer(env),
    )


def seconds(name: str, env: Mapping[str, str]) -> float:
    """A timeout in seconds (default DEFAULT_TIMEOUT_S); ConfigError if not valid."""
    raw = env.get(name, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds (got {raw!r})") from None
    if not MIN_TIMEOUT_S <= value <= MAX_TIMEOUT_S:  # NaN fails this too
        raise ConfigError(
            f"{name} must be between {MIN_TIMEOUT_S:g} and {MAX_TIMEOUT_S:g} (got {raw!r})"
        )
    return value


def default_max_connections() -> int:
    """DEFAULT_MAX_CONNECTIONS, or half the descriptor limit if that is lower (the
    other half is for the watchers, the store and cargo's pipes)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(1, min(DEFAULT_MAX_CONNECTIONS, soft // 2))


def max_connections(env: Mapping[str, str]) -> int:
    """The connection cap (default default_max_connections()); ConfigError if not valid."""
    return _integer(MAX_CONNECTIONS_ENV, env, MAX_MAX_CONNECTIONS) or default_max_connections()


def subscriber_buffer(env: Mapping[str, str]) -> int:
    """The per-subscriber buffer (default SUBSCRIBER_BUFFER); ConfigError if not valid."""
    # 0 would make anyio's stream unbuffered: every subscriber dropped on its first event.
    return _integer(SUBSCRIBER_BUFFER_ENV, env, MAX_SUBSCRIBER_BUFFER) or SUBSCRIBER_BUFFER


def _integer(name: str, env: Mapping[str, str], maximum: int) -> int | None:
    """The integer 1..maximum the variable holds; None if unset or blank."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer (got {raw!r})") from None
    if not 1 <= value <= maximum:
        raise ConfigError(f"{name} must be between 1 and {maximum} (got {value})")
    return value
