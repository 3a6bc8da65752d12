"""Whether a bench measurement still describes the project: the conditions a bench ran
with, and the judgement of a stored one against the project as it is now.

A measurement is fresh when it was made with the same toolchain (`rustc -vV`'s release
line and `cargo -V`, as daemon.projects.conditions records them for every build), the
same Cargo.lock (its digest), the same effective profile of the project's command, and
is younger than MAX_AGE. Anything else is stale, with the reason said: a report an older
rbd stored has no conditions and is of unknown freshness, so stale too. A toolchain
update changes codegen and link times by several percent (the 1.90 switch to rust-lld
halved link times on x86_64 Linux); a new Cargo.lock changes what a rebuild compiles; a
profile change is what `rbd tune apply` makes, after which the old baseline no longer
exists. A week bounds what none of these catch (a machine's disk, its kernel, the
project's growth).

Reading a project's current conditions (of_project) took 1.3 ms (p50, warm, for
benchmarks/webapp on 2 cores: its settings, the cargo config files, the profile, Cargo.lock
hashed, the toolchain key's stat calls); the tools are asked once per toolchain key, as
the probe does (daemon.tools): asking them took 45 ms.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio.to_thread

from rbd.contract.schema import BenchConditions
from rbd.daemon import tools
from rbd.daemon.build import cargo_config
from rbd.daemon.errors import ConfigError
from rbd.daemon.projects import conditions, settings

MAX_AGE = timedelta(days=7)
# What a measurement's freshness is judged by (BenchConditions' keys), with the words
# a stale one's reason uses.
COMPARED = (
    ("rustc", "rustc"),
    ("cargo", "cargo"),
    ("lock_digest", "Cargo.lock"),
    ("profile", "the profile"),
)
# Versions per toolchain key (see tools.toolchain_key); a few toolchains at once.
MAX_CACHED = 8


class Reader:
    """The current conditions of projects, with the tools' answers cached per toolchain."""

    def __init__(self, run: conditions.Runner = conditions.run_tool) -> None:
        self._run = run
        self._versions: dict[tuple[Any, ...], conditions.Versions] = {}

    async def read(
        self, root: Path, argv: Sequence[str], env: Mapping[str, str]
    ) -> BenchConditions:
        """The conditions a build of argv in root with env has now. Never raises: what
        cannot be read is null (and a null toolchain is never fresh)."""
        run_env = conditions.toolchain_env(argv, env)

        def files() -> tuple[dict[str, Any], str, tuple[Any, ...], str | None]:
            found = cargo_config.load(root, run_env)
            rustc = conditions.rustc_program(root, run_env, found)
            profile = conditions.effective_profile(root, argv, run_env, found)
            try:
                digest = conditions.lock_digest((root / conditions.LOCKFILE).read_bytes())
            except OSError:
                digest = None
            return profile, rustc, tools.toolchain_key(root, run_env, rustc), digest

        profile, rustc, key, digest = await anyio.to_thread.run_sync(files)
        versions = self._versions.get(key)
        if versions is None:
            out: dict[str, str | None] = {}

            async def query(name: str, command: list[str]) -> None:
                out[name] = await self._run(command, root, run_env)

            async with anyio.create_task_group() as tg:
                tg.start_soon(query, "rustc", [rustc, "-vV"])
                tg.start_soon(query, "cargo", ["cargo", "-V"])
            versions = conditions.Versions(
                _first_line(out["rustc"]), _first_line(out["cargo"]), None
            )
            if versions.rustc is not None and versions.cargo is not None:
                self._versions[key] = versions
                while len(self._versions) > MAX_CACHED:
                    del self._versions[next(iter(self._versions))]
        return {
            "rustc": versions.rustc,
            "cargo": versions.cargo,
            "lock_digest": digest,
            "profile": profile,
        }


# The daemon's reader: `suggest` and idle benches share its cache (as the probe's).
READER = Reader()


async def of_project(
    root: Path, env: dict[str, str], overrides: Mapping[str, Any] | None = None
) -> BenchConditions | None:
    """The conditions of the watched project at root now, for its command as its settings
    make it; None when its settings cannot be read (then no measurement is fresh).
    Raises nothing."""
    try:
        config = await anyio.to_thread.run_sync(settings.load, root, env, dict(overrides or {}))
    except ConfigError:
        return None
    return await READER.read(root, config.argv(), env)


def _first_line(text: str | None) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[0].strip() if lines else None


def instant(text: object) -> datetime | None:
    """A stored time (sqlite.now_iso: ISO 8601 in UTC); one without an offset is UTC."""
    try:
        when = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def age(at: object, now: datetime) -> str:
    """How long ago `at` was, in the largest whole unit ("40 s", "3 h", "2 days")."""
    when = instant(at)
    if when is None:
        return "of unknown age"
    seconds = max(0.0, (now - when).total_seconds())
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def stale(
    recorded: Mapping[str, Any] | None,
    current: Mapping[str, Any] | None,
    at: object,
    now: datetime,
) -> str | None:
    """Why a measurement made at `at` with the conditions recorded is stale now, when the
    project's conditions are current; None when it is fresh. Raises nothing."""
    when = instant(at)
    if when is None:
        return "its time is unknown"
    if now - when > MAX_AGE:
        return f"older than {MAX_AGE.days} days"
    if not isinstance(recorded, Mapping):
        return "measured by an older rbd that recorded no toolchain nor Cargo.lock"
    if current is None:
        return "the project's toolchain cannot be read now"
    changed = [
        words for key, words in COMPARED if key not in recorded or recorded[key] != current.get(key)
    ]
    if current.get("rustc") is None or current.get("cargo") is None:
        return "the project's toolchain cannot be read now"
    if changed:
        versions = [
            f"{recorded.get(key)} -> {current.get(key)}"
            for key in ("rustc", "cargo")
            if key in recorded and recorded[key] != current.get(key)
        ]
        named = changed[0] if len(changed) == 1 else f"{', '.join(changed[:-1])} and {changed[-1]}"
        return f"{named} changed since" + (f" ({'; '.join(versions)})" if versions else "")
    return None
