"""sccache's server, started outside any build, so that sweeping a build spares it.

Everything a build leaves running is killed when it ends (procs: its group, its
marker, its descendants). sccache's client starts its server on first use, as a
daemon in a session of its own and with the build's environment, marker included:
swept with the build, the server would be started again by every build (its start
and its in-memory state lost each time). So when the user's RUSTC_WRAPPER is
sccache, rbd makes sure a server runs before cargo does, started by rbd with the
project's environment and no marker: the build's clients then find it.

Asking `sccache --start-server` every build would cost 10-16 ms (measured, sccache
0.4) on the way from a save to cargo; a connect to the server's port costs well
under a millisecond, so that comes first and the server is started only when
nothing answers (the first build, or after its idle timeout). The server the daemon
starts is reparented to it (the daemon is a child subreaper) and so ends with it.

What sccache did for a build is the difference of its server's stats
(`--show-stats --stats-format json`, in 0.4 and 0.19 alike) read after cargo's spawn
and after its exit (`Counter`). A stats call costs 2.0 ms (sccache 0.4) or 2.7 ms
(0.19), medians of 30 on a quiet machine; 3-7 ms, 17 ms at worst, with both cores
busy. So neither read stands between a save and cargo: the first is started once cargo
runs, the second beside the build's analysis. sccache's counters move only when cargo's
first rustc call reaches the wrapper: 22-32 ms after the spawn on a quiet machine,
27-48 ms on a busy one (cargo's startup and fingerprinting; as a logging wrapper saw
it, clean and edit builds), and in 20 builds on the busy machine the first read always
answered before that. One that answers after cargo's first `Running` line may have
missed calls of the build: its counts are dropped, not guessed.

sccache hashes every CARGO_* variable into a Rust compile's cache key (read in 0.19's
source, measured on 0.4). rbd's builder sets CARGO_TERM_* for its progress lines; passed so, a
dependency rbd compiles gets a key no plain `cargo build` (CI's, a teammate's)
shares: measured, a `cargo clean` build that hit with plain cargo missed with
CARGO_TERM_COLOR=never alone. With sccache the builder passes the same settings as
`--config` (`TERM_CONFIG`), which reaches cargo but not rustc's environment: the same
build then hit.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import structlog

from rbd.contract.schema import SccacheStats

log = structlog.get_logger("builder")

DEFAULT_PORT = 4226
START_TIMEOUT_S = 10.0
STATS_TIMEOUT_S = 5.0
# cargo's settings the builder sets as CARGO_TERM_* variables, as `--config` words.
TERM_CONFIG = (
    ("CARGO_TERM_PROGRESS_WHEN", "term.progress.when", '"always"'),
    ("CARGO_TERM_PROGRESS_WIDTH", "term.progress.width", "1000"),
    ("CARGO_TERM_COLOR", "term.color", '"never"'),
)
# The stats' counts rbd reads: (its name, sccache's keys summed). A per-language count
# ({"counts": {"Rust": 3}}) is summed over languages.
COUNTS = (
    ("compile_requests", ("compile_requests",)),
    ("hits", ("cache_hits",)),
    ("misses", ("cache_misses",)),
    ("not_cacheable", ("requests_not_cacheable", "non_cacheable_compilations")),
    ("errors", ("cache_errors", "cache_read_errors", "cache_write_errors", "cache_timeouts")),
)
# Wrappers whose stats could not be read, logged once each.
_unreadable: set[str] = set()


def is_sccache(wrapper: str) -> bool:
    return Path(wrapper).name.startswith("sccache")


def answers(env: dict[str, str]) -> bool:
    """Whether an sccache server accepts connections where env's clients would look."""
    uds = env.get("SCCACHE_SERVER_UDS")
    try:
        if uds:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(0.2)
                sock.connect(uds)
            return True
        port = int(env.get("SCCACHE_SERVER_PORT") or DEFAULT_PORT)
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except (OSError, ValueError):
        return False


async def ensure_server(wrapper: str, env: dict[str, str]) -> None:
    """Start wrapper's server (wrapper is sccache) unless one answers already. Never
    raises: a server that cannot be started is the build's clients' to start, as
    without rbd, and its failure is theirs to report."""
    if answers(env):
        return
    try:
        with anyio.fail_after(START_TIMEOUT_S):
            done = await anyio.run_process(
                [wrapper, "--start-server"], env=env, check=False, stdin=subprocess.DEVNULL
            )
    except (OSError, TimeoutError) as exc:
        log.warning("sccache_not_started", wrapper=wrapper, error=str(exc))
        return
    # 2 with "Address in use": another one got there first, which is as good.
    if done.returncode not in (0, 2):
        log.warning(
            "sccache_not_started",
            wrapper=wrapper,
            error=done.stderr.decode(errors="replace").strip()[:500],
        )


def with_term_config(
    argv: list[str], env: dict[str, str], user_env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """argv and env with the builder's CARGO_TERM_* settings moved into `--config`
    words (before the subcommand, after a `+toolchain`), each variable as the user's
    environment had it: sccache's keys then match a plain cargo's."""
    words: list[str] = []
    out = dict(env)
    for variable, key, value in TERM_CONFIG:
        words += ["--config", f"{key}={value}"]
        if variable in user_env:
            out[variable] = user_env[variable]
        else:
            out.pop(variable, None)
    at = 2 if len(argv) > 1 and argv[1].startswith("+") else 1
    return [*argv[:at], *words, *argv[at:]], out


async def read_stats(wrapper: str, env: dict[str, str]) -> dict[str, Any] | None:
    """The stats of the server env's clients use, as sccache prints them in JSON (its
    `stats` object and `cache_location`); None when they cannot be read (an sccache
    without `--stats-format`, no server, a timeout). Never raises."""
    try:
        with anyio.fail_after(STATS_TIMEOUT_S):
            done = await anyio.run_process(
                [wrapper, "--show-stats", "--stats-format", "json"],
                env=env,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        if done.returncode != 0:
            raise ValueError(done.stderr.decode(errors="replace").strip()[:300])
        info = json.loads(done.stdout)
        if not isinstance(info, dict) or not isinstance(info.get("stats"), dict):
            raise ValueError("no `stats` object in sccache's JSON")
    except (OSError, TimeoutError, ValueError) as exc:
        if wrapper not in _unreadable:
            _unreadable.add(wrapper)
            log.warning("sccache_stats_unreadable", wrapper=wrapper, error=str(exc))
        return None
    return info


def _count(stats: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    total = 0
    for key in keys:
        value = stats.get(key)
        if isinstance(value, dict):
            value = value.get("counts")
            if not isinstance(value, dict):
                return None
            value = sum(v for v in value.values() if isinstance(v, int))
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        total += value
    return total


def _reasons(stats: dict[str, Any]) -> dict[str, int]:
    found = stats.get("not_cached")
    if not isinstance(found, dict):
        return {}
    return {str(k): v for k, v in found.items() if isinstance(v, int) and not isinstance(v, bool)}


def difference(before: dict[str, Any], after: dict[str, Any]) -> SccacheStats | None:
    """What the server counted between two reads of its stats (read_stats); None when
    they cannot be one server's (a count went down: it was restarted in between)."""
    counts: dict[str, int | None] = {}
    for name, keys in COUNTS:
        old, new = _count(before["stats"], keys), _count(after["stats"], keys)
        if old is not None and new is not None and new < old:
            return None
        counts[name] = None if old is None or new is None else new - old
    old_reasons, new_reasons = _reasons(before["stats"]), _reasons(after["stats"])
    reasons = {
        reason: n - old_reasons.get(reason, 0)
        for reason, n in sorted(new_reasons.items())
        if n > old_reasons.get(reason, 0)
    }
    hits, misses = counts["hits"], counts["misses"]
    location = after.get("cache_location")
    return {
        "compile_requests": counts["compile_requests"],
        "hits": hits,
        "misses": misses,
        "not_cacheable": counts["not_cacheable"],
        "errors": counts["errors"],
        "hit_rate": (
            round(hits / (hits + misses), 4)
            if hits is not None and misses is not None and hits + misses
            else None
        ),
        "reasons": reasons,
        "location": location if isinstance(location, str) else None,
    }


class Counter:
    """One build's sccache counts: `before()` once cargo runs, `after()` once it exited."""

    def __init__(self, wrapper: str, env: dict[str, str]) -> None:
        self.wrapper = wrapper
        self.env = env
        self._before: dict[str, Any] | None = None
        self._late = False
        self.answered = anyio.Event()

    async def before(self, started: Callable[[], bool]) -> None:
        """Read the stats; started tells whether cargo has begun running units by the
        time they answer (then they may count some of them). Never raises."""
        try:
            self._before = await read_stats(self.wrapper, self.env)
            self._late = started()
        finally:
            self.answered.set()

    async def after(self) -> SccacheStats | None:
        """The build's counts; None when a read failed, or when the first one answered
        after cargo began running units. Never raises."""
        await self.answered.wait()
        if self._before is None:
            return None
        if self._late:
            log.info("sccache_stats_late", wrapper=self.wrapper)
            return None
        after = await read_stats(self.wrapper, self.env)
        return None if after is None else difference(self._before, after)
