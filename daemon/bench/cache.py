"""The `sccache` configuration's cache in `rbd bench`: a server of the bench's own, and an
empty cache for every cold run.

A bench measures sccache on clean builds twice (daemon.bench.runner): cold, from an
empty cache, and warm, from the cache the cold run just before it filled. Every cold run
starts from empty, not only the bench's first, so that its runs are alike and their
spread means something.

The bench's sccache server is its own: its own port (SCCACHE_SERVER_PORT, a socket path
dropped), so the user's server, its counters and its cache are left alone, and the
per-build stats (daemon.build.sccache) count the bench's builds only. Its cache is
local disk under the bench's dir by default. A backend the user's environment names
(SCCACHE_REDIS_ENDPOINT, SCCACHE_BUCKET ...) is passed through, so a team measures
its own shared cache; what is in it is the team's and is never deleted: a cold run
instead gets a key prefix of its own below the user's (SCCACHE_*_KEY_PREFIX, read by
sccache 0.19 for every backend below), which the warm run after it reuses. Each cold run
writes a whole set of the project's dependencies there (60 MB for benchmarks/webapp:
4 cold runs left 241 MB in Redis): in Redis they expire after BENCH_REDIS_TTL_S, set on
the bench's server only (no one reads them after the warm run that follows); in other
backends they stay until the bucket's own expiry rules. A backend named only in
sccache's config file, or one with no prefix variable here (GitHub Actions' cache), is
used as it is: its cold runs may then hit, as their counts show.

sccache reads its cache's location when its server starts, so each cold run stops the
bench's server and starts a new one: a cold run also pays a new server's first look at
the compiler (it hashes the toolchain), as a developer's first build after sccache's
idle timeout does.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import anyio
import structlog

from rbd.daemon.build import sccache
from rbd.daemon.errors import ConfigError

log = structlog.get_logger("bench")

# A variable naming a backend -> the variable of that backend's key prefix.
PREFIXES = {
    "SCCACHE_REDIS": "SCCACHE_REDIS_KEY_PREFIX",
    "SCCACHE_REDIS_ENDPOINT": "SCCACHE_REDIS_KEY_PREFIX",
    "SCCACHE_REDIS_CLUSTER_ENDPOINTS": "SCCACHE_REDIS_KEY_PREFIX",
    "SCCACHE_MEMCACHED": "SCCACHE_MEMCACHED_KEY_PREFIX",
    "SCCACHE_MEMCACHED_ENDPOINT": "SCCACHE_MEMCACHED_KEY_PREFIX",
    "SCCACHE_BUCKET": "SCCACHE_S3_KEY_PREFIX",
    "SCCACHE_GCS_BUCKET": "SCCACHE_GCS_KEY_PREFIX",
    "SCCACHE_AZURE_CONNECTION_STRING": "SCCACHE_AZURE_KEY_PREFIX",
    "SCCACHE_WEBDAV_ENDPOINT": "SCCACHE_WEBDAV_KEY_PREFIX",
    "SCCACHE_OSS_BUCKET": "SCCACHE_OSS_KEY_PREFIX",
    "SCCACHE_COS_BUCKET": "SCCACHE_COS_KEY_PREFIX",
}
STOP_TIMEOUT_S = 10.0
# How long the bench's entries live in Redis: a warm run reads them right after the
# clean build that wrote them.
BENCH_REDIS_TTL_S = 3600


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BenchCache:
    """The bench's sccache server and cache. `env()` gives a build the variables that
    reach them; `cold()` empties the cache; `close()` stops the server."""

    def __init__(self, directory: Path, wrapper: str) -> None:
        self.directory = directory
        self.wrapper = wrapper
        self.port = _free_port()
        self.namespace = secrets.token_hex(4)
        self._started: dict[str, str] | None = None

    def env(self, env: dict[str, str]) -> dict[str, str]:
        """env (a configuration's, as the user's environment makes it) pointed at the
        bench's server and its current cache."""
        out = {**env, "SCCACHE_SERVER_PORT": str(self.port)}
        out.pop("SCCACHE_SERVER_UDS", None)
        out["SCCACHE_DIR"] = str(self.directory / "cache")
        for named, prefix in PREFIXES.items():
            if env.get(named):
                own = env.get(prefix, "").strip("/")
                out[prefix] = "/".join(p for p in (own, f"rbd-bench-{self.namespace}") if p)
        if "SCCACHE_REDIS_KEY_PREFIX" in out:
            # sccache refuses both names; the bench's entries need no longer than this.
            out.pop("SCCACHE_REDIS_TTL", None)
            out["SCCACHE_REDIS_EXPIRATION"] = str(BENCH_REDIS_TTL_S)
        return out

    async def ready(self, env: dict[str, str]) -> None:
        """The bench's server running, started with `env(env)` unless it runs."""
        if self._started is None:
            self._started = self.env(env)
            await sccache.ensure_server(self.wrapper, self._started)

    async def cold(self, env: dict[str, str]) -> None:
        """An empty cache (a new local dir, a new key prefix) behind a server started
        with `env(env)`. Raises ConfigError when the old server does not stop."""
        await self.close()
        self.namespace = secrets.token_hex(4)
        await anyio.to_thread.run_sync(
            lambda: shutil.rmtree(self.directory / "cache", ignore_errors=True)
        )
        await self.ready(env)

    async def close(self) -> None:
        """Stop the bench's server, if one runs; wait until its port is closed (a new
        one would otherwise find the old one answering). Raises ConfigError when it stays
        (its runs would not be cold)."""
        if self._started is None:
            return
        started, self._started = self._started, None
        with anyio.move_on_after(STOP_TIMEOUT_S):
            await anyio.run_process(
                [self.wrapper, "--stop-server"],
                env=started,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while sccache.answers(started):
            if time.monotonic() > deadline:
                raise ConfigError(f"the bench's sccache server (port {self.port}) did not stop")
            await anyio.sleep(0.05)
        log.info("bench_sccache_stopped", port=self.port)
