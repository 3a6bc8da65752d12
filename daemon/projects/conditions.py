"""What a watched project's build runs with (schema.Conditions), to tell why rebuilds got slower.

A build's conditions are what changes cargo's work without a source edit: the toolchain
(`rustc -vV`'s release line, `cargo -V`), Cargo.lock (its sha256, and its packages, kept
once per digest in the store's `lockfiles` table), the effective profile and rustflags of
the command run, the tune applied (`rbd tune apply`), and rbd's settings that change the
cargo command. daemon.advice.steps diffs them around a step in the rebuild times.

Cost, measured with rustc 1.95 through rustup on 2 cores, for benchmarks/webapp: `rustc
-vV` and `cargo -V` take about 20 ms each warm (45 ms both, run side by side), a second
cold; reading Cargo.toml, cargo's config files and hashing Cargo.lock about 1 ms; the
toolchain fingerprint below 0.2 ms; parsing Cargo.lock's 68 packages 4 ms (once per
digest: the store keeps them). So:

- the versions are cached per toolchain fingerprint: the environment variables that choose
  the toolchain and the stat of the files that do (rust-toolchain(.toml) in the root and
  above, rustup's settings.toml, toolchains dir and update-hashes, the rustc and cargo on
  PATH). A save re-stats about fifteen files instead of spawning two processes; a
  `rustup update`, a toolchain file or `RUSTUP_TOOLCHAIN` makes them run again;
- nothing is collected before cargo is spawned: a Gathering waits for the spawn and then
  runs beside the build, so starting cargo never waits for it;
- Cargo.lock is read when cargo has started and stat'ed again once it has exited: cargo
  rewrites it while resolving an edited manifest, and the build ran with the new one.

Nothing here raises into the build: what cannot be read is null, and a bug is logged.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import structlog

from rbd.contract.schema import Conditions
from rbd.daemon import tools
from rbd.daemon.advice import probe
from rbd.daemon.build import cargo_config
from rbd.daemon.errors import StoreError
from rbd.daemon.projects import tomlfile
from rbd.daemon.projects.settings import ProjectConfig
from rbd.daemon.store.asyncstore import AsyncStore

log = structlog.get_logger("conditions")

# A rustup proxy that hangs (a lock, the network) must not hold a build's record up long.
VERSION_TIMEOUT_S = 10.0
LOCKFILE = "Cargo.lock"
# The environment variables that choose which rustc and cargo run.
# Versions of a few toolchains at once (a project switching between two, several roots).
MAX_CACHED = 8
# The profiles cargo defines itself, and the one each inherits from.
BUILTIN_INHERITS = {"test": "dev", "bench": "release"}
ROOT_PROFILES = ("dev", "release")

# What runs a tool: (argv, cwd, env) -> its stdout, None when it failed.
Runner = Callable[[list[str], Path, dict[str, str]], Awaitable[str | None]]


async def run_tool(argv: list[str], cwd: Path, env: dict[str, str]) -> str | None:
    """A tool's stdout; None when it is missing, fails or takes too long."""
    return await tools.output(argv, cwd, env, VERSION_TIMEOUT_S, "version_query_failed")


# --- the cargo command --------------------------------------------------------------------


def _options(argv: Sequence[str]) -> list[str]:
    """cargo's own words of argv (after the program and a +toolchain, up to `--`)."""
    words = list(argv[1:])
    if words and words[0].startswith("+"):
        words = words[1:]
    return words[: words.index("--")] if "--" in words else words


def toolchain_env(argv: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """env as the rustc of `argv` sees it: `cargo +nightly` has rustup's proxy run the
    toolchain named, and tell its children so (RUSTUP_TOOLCHAIN)."""
    if len(argv) > 1 and argv[1].startswith("+"):
        return {**env, "RUSTUP_TOOLCHAIN": argv[1][1:]}
    return dict(env)


def profile_name(argv: Sequence[str]) -> str:
    """The profile cargo builds argv with: `--profile NAME`, `--release`, or the
    subcommand's default (test and bench have their own, inheriting dev and release)."""
    words = _options(argv)
    release = False
    for i, word in enumerate(words):
        if word == "--profile" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--profile="):
            return word.split("=", 1)[1]
        release = release or word in ("--release", "-r")
    if release:
        return "release"
    subcommand = words[0] if words else "build"
    return {"test": "test", "bench": "bench"}.get(subcommand, "dev")


def command_config(argv: Sequence[str]) -> dict[str, Any]:
    """The `--config KEY=VALUE` values of argv, merged (a later one wins). They take
    precedence over the environment and every config file. A `--config FILE` is skipped."""
    words = _options(argv)
    merged: dict[str, Any] = {}
    for i, word in enumerate(words):
        value = None
        if word == "--config" and i + 1 < len(words):
            value = words[i + 1]
        elif word.startswith("--config="):
            value = word.split("=", 1)[1]
        if value is None or "=" not in value:
            continue
        try:
            _merge(merged, tomllib.loads(value))
        except tomllib.TOMLDecodeError:
            continue  # cargo reports it, in the build
    return merged


def _merge(into: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """layer over into: tables merged key by key, anything else replaced (as cargo does)."""
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        elif isinstance(value, Mapping):
            into[key] = {}
            _merge(into[key], value)
        else:
            into[key] = value


def _table(data: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def _env_profile(env: Mapping[str, str], name: str) -> dict[str, Any]:
    """CARGO_PROFILE_<NAME>_<KEY> variables as a profile table."""
    prefix = "CARGO_PROFILE_" + name.upper().replace("-", "_") + "_"
    table: dict[str, Any] = {}
    for var, raw in env.items():
        if not var.startswith(prefix):
            continue
        key = var[len(prefix) :].lower().replace("_", "-")
        value = probe.parse_env_value(raw)
        if key.startswith("build-override-"):
            table.setdefault("build-override", {})[key.removeprefix("build-override-")] = value
        else:
            table[key] = value
    return table


def effective_profile(
    root: Path,
    argv: Sequence[str],
    env: Mapping[str, str],
    files: Sequence[cargo_config.ConfigFile],
) -> dict[str, Any]:
    """The profile argv builds with, as set for this project: `name`, and every key set
    along its `inherits` chain, merged lowest first from the root Cargo.toml, the config
    files (farthest first), CARGO_PROFILE_* variables and `--config` arguments. Keys left
    at cargo's defaults are absent: what is compared is what someone set."""
    try:
        manifest = tomlfile.read(root / "Cargo.toml")
    except (OSError, ValueError):  # cargo reports a broken manifest in the build
        manifest = {}
    command = command_config(argv)

    def layers(name: str) -> list[dict[str, Any]]:
        found = [_table(manifest, "profile", name)]
        found += [_table(f.data, "profile", name) for f in reversed(files)]
        return [*found, _env_profile(env, name), _table(command, "profile", name)]

    name = profile_name(argv)
    chain: list[str] = []
    current: str | None = name
    while current is not None and current not in chain:
        chain.insert(0, current)
        if current in ROOT_PROFILES:
            break
        inherits = [layer["inherits"] for layer in layers(current) if "inherits" in layer]
        current = str(inherits[-1]) if inherits else BUILTIN_INHERITS.get(current)
    merged: dict[str, Any] = {}
    for profile in chain:
        for layer in layers(profile):
            _merge(merged, layer)
    merged.pop("inherits", None)
    # build.incremental and CARGO_INCREMENTAL override every profile's setting.
    layered = [cargo_config.ConfigFile(Path(), command), *files]
    found = cargo_config.lookup(layered, "build", "incremental")
    if found is not None:
        merged["incremental"] = found[0]
    for var, on in (("CARGO_BUILD_INCREMENTAL", "true"), ("CARGO_INCREMENTAL", "1")):
        if var in env:
            merged["incremental"] = env[var] == on
    return {"name": name, **merged}


def rustflags(
    argv: Sequence[str],
    env: Mapping[str, str],
    files: Sequence[cargo_config.ConfigFile],
    host: str | None,
) -> str | None:
    """The flags cargo passes rustc for host builds (see probe.effective_rustflags), one
    string; None when there are none."""
    command = command_config(argv)
    layered = [cargo_config.ConfigFile(Path(), command), *files] if command else list(files)
    flags = probe.effective_rustflags(host, dict(env), layered)[0]
    return " ".join(flags) if flags else None


# --- the toolchain ------------------------------------------------------------------------


def rustc_program(root: Path, env: Mapping[str, str], files: list[cargo_config.ConfigFile]) -> str:
    """The rustc cargo runs: RUSTC, CARGO_BUILD_RUSTC, build.rustc, or rustup's proxy."""
    for var in ("RUSTC", "CARGO_BUILD_RUSTC"):
        if env.get(var):
            return cargo_config.program(env[var], root)
    found = cargo_config.lookup(files, "build", "rustc")
    if found is not None and isinstance(found[0], str) and found[0]:
        return cargo_config.program(found[0], found[1].base)
    return "rustc"


@dataclass(frozen=True)
class Versions:
    rustc: str | None
    cargo: str | None
    host: str | None


def _versions(rustc_out: str | None, cargo_out: str | None) -> Versions:
    rustc_lines = (rustc_out or "").splitlines()
    host = next(
        (line.split(":", 1)[1].strip() for line in rustc_lines if line.startswith("host:")), None
    )
    return Versions(
        rustc_lines[0].strip() if rustc_lines else None,
        (cargo_out or "").strip().splitlines()[0] if (cargo_out or "").strip() else None,
        host,
    )


# --- Cargo.lock ---------------------------------------------------------------------------


def lock_digest(data: bytes) -> str:
    """A lockfile's digest: sha256, 16 hex digits."""
    return hashlib.sha256(data).hexdigest()[:16]


def lock_packages(data: bytes) -> list[tuple[str, str]]:
    """The (name, version) of every `[[package]]` of a lockfile, sorted; empty when it
    does not parse (cargo rewrites or reports it)."""
    try:
        parsed = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return []
    found = {
        (str(p["name"]), str(p.get("version", "")))
        for p in parsed.get("package") or []
        if isinstance(p, dict) and "name" in p
    }
    return sorted(found)


@dataclass(frozen=True)
class _Lock:
    stat: tuple[int, int, int] | None
    digest: str | None
    data: bytes | None


def _read_lock(path: Path) -> _Lock:
    stat = tools.stat(path)
    if stat is None:
        return _Lock(None, None, None)
    try:
        data = path.read_bytes()
    except OSError:
        return _Lock(None, None, None)
    return _Lock(stat, lock_digest(data), data)


# --- collecting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Files:
    """What one build's conditions read from files (in a worker thread)."""

    files: list[cargo_config.ConfigFile]
    profile: dict[str, Any]
    rustc: str
    key: tuple[Any, ...]
    lock: _Lock


def _read_files(root: Path, argv: Sequence[str], env: dict[str, str]) -> _Files:
    files = cargo_config.load(root, env)
    rustc = rustc_program(root, env, files)
    return _Files(
        files=files,
        profile=effective_profile(root, argv, env, files),
        rustc=rustc,
        key=tools.toolchain_key(root, env, rustc),
        lock=_read_lock(root / LOCKFILE),
    )


class Collector:
    """A project's conditions collector: the versions cache, and the lockfiles the store
    has (so each digest's packages are parsed and written once)."""

    def __init__(self, store: AsyncStore, run: Runner = run_tool) -> None:
        self.store = store
        self._run = run
        self._versions: dict[tuple[Any, ...], Versions] = {}
        self._lockfiles: set[str] = set()

    def begin(
        self,
        root: Path,
        argv: Sequence[str],
        env: Mapping[str, str],
        config: ProjectConfig,
        build_config: str,
    ) -> Gathering:
        """A build's conditions, collected once cargo runs (Gathering.run): argv run with
        env in root, by the project's settings config and the build configuration named."""
        # rbd's settings that change the cargo command (not run mode's, nor timings).
        settings = {"command": config.command, "args": list(config.args), "config": build_config}
        return Gathering(self, root, list(argv), toolchain_env(argv, env), settings)

    async def versions(self, root: Path, env: dict[str, str], rustc: str, key: Any) -> Versions:
        cached = self._versions.get(key)
        if cached is not None:
            return cached
        out: dict[str, str | None] = {}

        async def query(name: str, argv: list[str]) -> None:
            out[name] = await self._run(argv, root, env)

        async with anyio.create_task_group() as tg:
            tg.start_soon(query, "rustc", [rustc, "-vV"])
            tg.start_soon(query, "cargo", ["cargo", "-V"])
        found = _versions(out["rustc"], out["cargo"])
        if found.rustc is not None and found.cargo is not None:  # a failure is asked again
            if len(self._versions) >= MAX_CACHED:
                self._versions.pop(next(iter(self._versions)))
            self._versions[key] = found
        return found

    async def keep_lockfile(self, lock: _Lock) -> None:
        """Store the packages of lock's digest, unless the store has them."""
        digest, data = lock.digest, lock.data
        if digest is None or data is None or digest in self._lockfiles:
            return
        try:
            if await self.store.call(self.store.sync.lockfile, digest) is None:
                packages = await anyio.to_thread.run_sync(lock_packages, data)
                await self.store.write(self.store.sync.save_lockfile, digest, packages)
            self._lockfiles.add(digest)
        except StoreError as exc:
            log.error("store_failed", error=str(exc))

    async def active_tune(self, root: Path) -> int | None:
        try:
            return await self.store.call(self.store.sync.active_tune, str(root))
        except StoreError as exc:
            log.error("store_failed", error=str(exc), root=str(root))
            return None


class Gathering:
    """One build's conditions: run() beside the build, finish() once cargo has exited."""

    def __init__(
        self,
        collector: Collector,
        root: Path,
        argv: list[str],
        env: dict[str, str],
        settings: dict[str, Any],
    ) -> None:
        self.collector = collector
        self.root = root
        self.argv = argv
        self.env = env
        self.settings = settings
        # What was collected (None until run() is done, or if it failed).
        self.conditions: Conditions | None = None
        self._lock: _Lock | None = None
        self._go = anyio.Event()
        self._done = anyio.Event()

    async def run(self, spawned: anyio.Event) -> None:
        """Collect, once cargo is spawned (or the build ended without it). Never raises
        but cancellation."""
        try:
            async with anyio.create_task_group() as tg:

                async def go_on(event: anyio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(go_on, spawned)
                tg.start_soon(go_on, self._go)
            await self._collect()
        except Exception:
            log.exception("conditions_failed", root=str(self.root))
        finally:
            self._done.set()

    async def _collect(self) -> None:
        collector = self.collector
        read = await anyio.to_thread.run_sync(_read_files, self.root, self.argv, self.env)
        versions = await collector.versions(self.root, self.env, read.rustc, read.key)
        self._lock = read.lock
        await collector.keep_lockfile(read.lock)
        self.conditions = {
            "rustc": versions.rustc,
            "cargo": versions.cargo,
            "lock_digest": read.lock.digest,
            "profile": read.profile,
            "rustflags": rustflags(self.argv, self.env, read.files, versions.host),
            "tune": await collector.active_tune(self.root),
            "settings": self.settings,
        }

    async def finish(self) -> Conditions | None:
        """The conditions, once cargo has exited: Cargo.lock as cargo left it, and the
        tune as the store has it now (`rbd tune apply` records a tune after writing its
        files and checking them with cargo, while the build they trigger runs)."""
        self._go.set()
        await self._done.wait()
        if self.conditions is None or self._lock is None:
            return self.conditions
        self.conditions = {**self.conditions, "tune": await self.collector.active_tune(self.root)}
        path = self.root / LOCKFILE
        if tools.stat(path) != self._lock.stat:
            try:
                lock = await anyio.to_thread.run_sync(_read_lock, path)
                await self.collector.keep_lockfile(lock)
            except Exception:
                log.exception("conditions_failed", root=str(self.root))
            else:
                self.conditions = {**self.conditions, "lock_digest": lock.digest}
        return self.conditions
