"""Named build configurations: how `rbd start --config NAME` and `rbd bench` change a build.

A configuration is one of NAMES or several joined with "+" ("mold+line-tables-only"),
with at most one linker and one debuginfo choice. Every configuration but "default"
builds into its own `<target dir>/rbd/<name>`: its flags change cargo's fingerprints,
and building them into the user's target dir would make the user's next `cargo build`
rebuild everything.

Measured with rustc/cargo 1.95 on x86_64-unknown-linux-gnu (gcc 12 as linker driver):

- rustc links with its bundled rust-lld by passing `-fuse-ld=lld` and `-B<sysroot>/gcc-ld`.
  `-Clinker-features=-lld` (stable on this one target only: aarch64 and musl answer "is
  unstable on the `...` target") drops both, leaving gcc's default GNU ld. After it,
  `-Clink-arg=-fuse-ld=mold|lld|bfd` links with that linker from PATH (daemon.build.linker
  confirms mold, lld = "Debian LLD 14", bfd). Without `-lld`, `-fuse-ld=mold` also won
  (gcc takes the last -fuse-ld) but the bundled one stays on the command line, and
  `-fuse-ld=lld` alone still finds rust-lld in the -B dir, not the system ld.lld.
  `-Clink-self-contained=-linker` alone fails with "cannot find 'ld'" unless ld.lld is
  installed. Other Linux hosts get just the -fuse-ld argument: they default to cc's ld.
- Linker flags travel in rustflags, and cargo uses only the first of
  CARGO_ENCODED_RUSTFLAGS, RUSTFLAGS, target.<triple>.rustflags (+ every matching
  target.'cfg(..)'.rustflags) and build.rustflags. `CARGO_TARGET_<HOST>_RUSTFLAGS` is
  appended to file values (string or array); a `--config target...rustflags=[..]` array
  instead fails with "failed to merge key" against a string in a file, so rbd uses the
  environment. Arrays in several files are joined, the farthest first.
- `--config profile.dev.debug="line-tables-only"` / `"none"` and
  `--config profile.dev.package."*".opt-level=1` (one argv word, no shell quoting) are
  accepted; a custom profile with `inherits = "dev"` picks both up.
- Cranelift: nightly cargo accepts the profile `rbd-cranelift` defined by `--config`
  with `-Zcodegen-backend` and passes `-Z codegen-backend=cranelift` to rustc; stable
  cargo refuses it ("requires the Cargo feature called `codegen-backend`"). Without the
  rustc-codegen-cranelift-preview component rustc fails with "failed to find a
  `codegen-backends` folder": it was never run to completion here.
- wild (crates.io `wild-linker`, binary `wild`; 0.11 needs rustc 1.99, 0.10.0 installs
  with 1.95: `cargo install --locked wild-linker --version 0.10.0`, 3 min 55 s on 2 busy
  cores here). gcc 12's -fuse-ld knows bfd/gold/lld/mold only and no clang is installed,
  so rbd uses wild's documented `-B` form: a directory holding `ld` -> wild (kept under
  rbd's cache dir, see wild_dir), with `-Clinker-features=-lld`. Without that flag rustc's
  `-fuse-ld=lld` still picks rust-lld and the -B directory is never asked for `ld`; with
  the directory gone gcc silently falls back to GNU ld (both checked with .comment, where
  wild writes "Linker: Wild 0.10.0 ..."): so the directory must outlive `cargo clean`,
  and lives outside every target dir.
- split-debuginfo: `--config profile.dev.split-debuginfo="unpacked"`. It chooses where
  debuginfo goes, not how much: rustc 1.95 writes .dwo files beside the objects (in
  deps/ and the incremental dirs) and the linker no longer copies the crate's debuginfo
  (std's, prebuilt, still is). It combines with line-tables-only (12 .dwo files for a
  hello world, `-C debuginfo=line-tables-only -C split-debuginfo=unpacked`); with
  no-debuginfo there is nothing to split, and parse refuses the pair.
- parallel-frontend: `-Zthreads=<cores>` in rustflags (the way linkers add theirs,
  rustflags_env) for `cargo +<nightly>`; nightly 1.97 here builds with it (rustc -v shows
  `-Zthreads=2`). Only rbd's own builds in their own target dir use the nightly (a
  bench, or `rbd start --config parallel-frontend` asked for by name): the user's own
  builds change only by the manual change `rbd suggest` shows.
- sccache: the same build with RUSTC_WRAPPER=sccache (the user's own sccache when their
  wrapper is one, which may have a shared backend, else the one on PATH). RUSTC_WRAPPER
  is not part of cargo's fingerprints, so it could share the user's target dir, but
  builds there would be fresh: it gets its own like the others. In `rbd bench` its
  clean builds are measured cold and warm (daemon.bench.cache).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rbd.contract import paths
from rbd.daemon.advice import probe
from rbd.daemon.build import cargo_config, sccache
from rbd.daemon.errors import ConfigError, Unavailable

NAMES: tuple[str, ...] = (
    "default",
    "mold",
    "lld",
    "bfd",
    "wild",
    "line-tables-only",
    "no-debuginfo",
    "split-debuginfo",
    "deps-opt",
    "cranelift",
    "parallel-frontend",
    "sccache",
)
# The program gcc's -fuse-ld=<name> runs, and how to get it.
LINKERS = {
    "mold": ("ld.mold", "mold is not installed: apt-get install mold"),
    "lld": ("ld.lld", "lld is not installed (no ld.lld on PATH): apt-get install lld"),
    "bfd": ("ld.bfd", "GNU ld is not installed (no ld.bfd on PATH): apt-get install binutils"),
}
# Linkers rbd runs another way than gcc's -fuse-ld (wild: through a -B directory).
OTHER_LINKERS = ("wild",)
WILD_HINT = probe.WILD_HINT
DEBUGINFO = {"line-tables-only": '"line-tables-only"', "no-debuginfo": '"none"'}
SPLIT_DEBUGINFO = 'profile.dev.split-debuginfo="unpacked"'
PARALLEL_HINT = (
    "parallel-frontend needs a nightly toolchain (-Zthreads is unstable): "
    "rustup toolchain install nightly"
)
DEPS_OPT = 'profile.dev.package."*".opt-level=1'
CRANELIFT_PROFILE = "rbd-cranelift"
CRANELIFT_HINT = (
    "cranelift needs a nightly toolchain with the rustc-codegen-cranelift-preview component: "
    "rustup toolchain install nightly && "
    "rustup component add rustc-codegen-cranelift-preview --toolchain nightly"
)
SCCACHE_HINT = (
    "sccache is not installed: apt-get install sccache, or cargo install --locked sccache"
)
# The one target where rust-lld is the default and opting out of it is stable.
RUST_LLD_HOST = "x86_64-unknown-linux-gnu"
ENCODED_SEP = "\x1f"


@dataclass(frozen=True)
class BuildConfig:
    name: str
    available: bool
    reason: str | None
    toolchain: str | None = None
    cargo_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    target_dir: Path | None = None
    # A custom cargo profile: its artifacts land in target_dir/<profile>.
    profile: str | None = None

    def argv(self, base: list[str]) -> list[str]:
        """base (ProjectConfig.argv()) changed for this configuration. Insertions go right
        after the subcommand, before any `--` that hands the rest to rustc or clippy."""
        program, rest = base[0], list(base[1:])
        toolchain: list[str] = []
        if rest and rest[0].startswith("+"):
            toolchain, rest = [rest[0]], rest[1:]
        if self.toolchain:
            toolchain = [f"+{self.toolchain}"]
        extra = list(self.cargo_args)
        if self.target_dir is not None:
            # cargo refuses a second --target-dir: the user's one is replaced.
            rest = _without_target_dir(rest)
            extra += ["--target-dir", str(self.target_dir)]
        return [program, *toolchain, *rest[:1], *extra, *rest[1:]]

    def apply_env(self, env: dict[str, str]) -> dict[str, str]:
        """The environment to run cargo with. env must be the one given to resolve(): the
        rustflags set here already include the user's flags read from it."""
        return {**env, **self.env}

    def artifacts(self, profile_dir: str = "debug") -> Path | None:
        if self.target_dir is None:
            return None
        return self.target_dir / (self.profile or profile_dir)

    def require(self) -> BuildConfig:
        """self, or Unavailable with the reason."""
        if not self.available:
            raise Unavailable(f"build configuration {self.name}: {self.reason}")
        return self


def _without_target_dir(words: list[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for i, word in enumerate(words):
        if word == "--":
            return out + words[i:]
        if skip:
            skip = False
        elif word == "--target-dir":
            skip = True
        elif not word.startswith("--target-dir="):
            out.append(word)
    return out


def parse(name: str) -> tuple[str, ...]:
    """The parts of a configuration name in NAMES order (so that "line-tables-only+mold"
    and "mold+line-tables-only" are one configuration, building in one directory)."""
    parts = name.split("+")
    for part in parts:
        if part not in NAMES:
            raise ConfigError(
                f"unknown build configuration {part!r}: known are {', '.join(NAMES)}, "
                "and combinations joined with '+' (e.g. mold+line-tables-only)"
            )
    if len(parts) > 1 and "default" in parts:
        raise ConfigError(f"{name}: default cannot be combined with anything")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"{name}: a configuration is named twice")
    for kind, choices in (("linker", (*LINKERS, *OTHER_LINKERS)), ("debuginfo", DEBUGINFO)):
        chosen = [p for p in parts if p in choices]
        if len(chosen) > 1:
            raise ConfigError(f"{name}: at most one {kind} choice ({' or '.join(chosen)})")
    if "split-debuginfo" in parts and "no-debuginfo" in parts:
        raise ConfigError(f"{name}: with no-debuginfo there is no debuginfo to split")
    return tuple(sorted(parts, key=NAMES.index))


def sccache_program(root: Path, env: dict[str, str]) -> str | None:
    """The sccache a configuration with sccache runs: the user's rustc wrapper when it
    is sccache, else the one on env's PATH; None when there is none."""
    wrapper = cargo_config.rustc_wrapper(root, env)
    if wrapper is not None and sccache.is_sccache(wrapper):
        return wrapper
    return shutil.which("sccache", path=env.get("PATH", os.defpath))


def uses_sccache(config: BuildConfig) -> bool:
    """Whether the configuration is or includes `sccache`."""
    return "sccache" in config.name.split("+")


def _env_words(value: str) -> list[str]:
    # cargo splits these variables on single spaces and drops empty words.
    return [w.strip() for w in value.split(" ") if w.strip()]


def _file_flags(files: list[cargo_config.ConfigFile], *keys: str) -> list[str]:
    # cargo joins arrays from several files (the farthest first); a string replaces.
    flags: list[str] = []
    for config in reversed(files):
        found = cargo_config.lookup([config], *keys)
        if found is None:
            continue
        if isinstance(found[0], str):
            flags = found[0].split()
        elif isinstance(found[0], list):
            flags += [str(flag) for flag in found[0]]
    return flags


def _cfg_flag_files(files: list[cargo_config.ConfigFile]) -> list[Path]:
    paths = []
    for config in files:
        target = config.data.get("target")
        if isinstance(target, dict) and any(
            key.startswith("cfg(") and isinstance(table, dict) and "rustflags" in table
            for key, table in target.items()
        ):
            paths.append(config.path)
    return paths


def rustflags_env(
    ours: list[str], root: Path, env: dict[str, str], host: str
) -> tuple[dict[str, str], str | None]:
    """Variables that give cargo the user's effective rustflags followed by ours, or the
    reason rbd cannot tell which flags are in effect."""
    if "CARGO_ENCODED_RUSTFLAGS" in env or "RUSTFLAGS" in env:
        if "CARGO_ENCODED_RUSTFLAGS" in env:
            raw = env["CARGO_ENCODED_RUSTFLAGS"]
            user = raw.split(ENCODED_SEP) if raw else []
        else:
            user = _env_words(env["RUSTFLAGS"])
        return {"CARGO_ENCODED_RUSTFLAGS": ENCODED_SEP.join([*user, *ours])}, None
    files = cargo_config.load(root, env)
    target_key = "CARGO_TARGET_" + host.upper().replace("-", "_").replace(".", "_") + "_RUSTFLAGS"
    target = _file_flags(files, "target", host, "rustflags")
    target += _env_words(env.get(target_key, ""))
    cfg_files = _cfg_flag_files(files)
    if target or cfg_files:
        build = _file_flags(files, "build", "rustflags")
        build += _env_words(env.get("CARGO_BUILD_RUSTFLAGS", ""))
        if not target and build:
            # build.rustflags apply only if no target.'cfg(..)' table matches the host,
            # which would take evaluating cfg expressions the way rustc does.
            return {}, (
                "rbd cannot tell whether build.rustflags or target.'cfg(..)'.rustflags "
                f"(in {', '.join(map(str, cfg_files))}) are in effect: "
                f"move the flags to [target.{host}] or [build]"
            )
        # cargo appends the variable to the files' target.<host>.rustflags and still
        # joins the matching cfg tables: the user's flags stay, ours come last.
        return {target_key: " ".join([*_env_words(env.get(target_key, "")), *ours])}, None
    build = _file_flags(files, "build", "rustflags")
    build += _env_words(env.get("CARGO_BUILD_RUSTFLAGS", ""))
    # The encoded form keeps flags with spaces in them (build.rustflags arrays) intact.
    return {"CARGO_ENCODED_RUSTFLAGS": ENCODED_SEP.join([*build, *ours])}, None


def linker_flags(linker: str, host: str) -> list[str]:
    flags = ["-Clinker-features=-lld"] if host == RUST_LLD_HOST else []
    return [*flags, f"-Clink-arg=-fuse-ld={linker}"]


def wild_flags(directory: Path, host: str) -> list[str]:
    """rustflags that link with the `ld` in directory (wild's, see wild_dir): gcc 12 asks
    its -B directories for `ld` once rustc's own -fuse-ld=lld is dropped."""
    flags = ["-Clinker-features=-lld"] if host == RUST_LLD_HOST else []
    return [*flags, f"-Clink-arg=-B{directory}"]


def linkers_dir() -> Path:
    """Where rbd keeps the directories linkers are run through (wild_dir): its cache dir,
    which no `cargo clean` empties."""
    return Path(paths.cache_dir()) / "ld-dirs"


def wild_dir(wild: str, base: Path) -> Path:
    """base/wild, holding `ld` as a symlink to the wild binary (made or re-pointed here,
    atomically: a build linking now sees the old link or the new one). Raises OSError."""
    directory = base / "wild"
    link = directory / "ld"
    target = os.path.abspath(wild)
    if os.path.islink(link) and os.readlink(link) == target:
        return directory
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = directory / f".ld-{uuid.uuid4().hex}"
    temporary.symlink_to(target)
    try:
        os.replace(temporary, link)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise
    return directory


def resolve(
    name: str,
    root: Path,
    target_dir: Path,
    env: dict[str, str],
    host: str,
    nightly_cranelift: str | None,
    *,
    nightly: str | None = None,
    cores: int | None = None,
    tools_dir: Path | None = None,
) -> BuildConfig:
    """The configuration called name for the workspace at root. nightly: the nightly
    toolchain parallel-frontend builds with (None: none installed); cores: its -Zthreads
    (default probe.available_cores()); tools_dir: where wild's `ld` directory goes (default
    linkers_dir()). An unknown or conflicting name raises ConfigError; one this machine
    lacks comes back with available False."""
    parts = parse(name)
    canonical = "+".join(parts)
    if parts == ("default",):
        return BuildConfig("default", True, None)
    reasons: list[str] = []
    args: list[str] = []
    variables: dict[str, str] = {}
    # One rustflags setting carries every part's flags (a linker's, -Zthreads).
    flags: list[str] = []
    wrapper: str | None = None
    toolchain: str | None = None
    profile: str | None = None
    path = env.get("PATH", os.defpath)
    for part in parts:
        if part in LINKERS or part in OTHER_LINKERS:
            if "-linux-" not in host:
                reasons.append(f"{part}: rbd chooses linkers on Linux only (host {host})")
            elif part == "wild":
                wild = probe.wild_program(env)
                if wild is None:
                    reasons.append(WILD_HINT)
                else:
                    try:
                        flags += wild_flags(wild_dir(wild, tools_dir or linkers_dir()), host)
                    except OSError as exc:
                        reasons.append(f"wild: cannot make its ld directory: {exc}")
            elif shutil.which(LINKERS[part][0], path=path) is None:
                reasons.append(LINKERS[part][1])
            else:
                flags += linker_flags(part, host)
        elif part in DEBUGINFO:
            args += ["--config", f"profile.dev.debug={DEBUGINFO[part]}"]
        elif part == "split-debuginfo":
            args += ["--config", SPLIT_DEBUGINFO]
        elif part == "deps-opt":
            args += ["--config", DEPS_OPT]
        elif part == "parallel-frontend":
            threads = cores or probe.available_cores()
            if nightly is None:
                reasons.append(PARALLEL_HINT)
            elif threads < 2:
                reasons.append("parallel-frontend: one CPU, nothing to run in parallel")
            else:
                # After cranelift in NAMES: a combination keeps cranelift's nightly.
                toolchain = toolchain or nightly
                flags.append(f"-Zthreads={threads}")
        elif part == "sccache":
            wrapper = sccache_program(root, env)
            if wrapper is None:
                reasons.append(SCCACHE_HINT)
        elif part == "cranelift":
            if nightly_cranelift is None:
                reasons.append(CRANELIFT_HINT)
            toolchain = nightly_cranelift
            profile = CRANELIFT_PROFILE
            # A profile of rbd's own, inheriting dev (and so the options above): the
            # user's profiles and stable builds never see codegen-backend.
            args += [
                "-Zcodegen-backend",
                "--config",
                f'profile.{profile}.inherits="dev"',
                "--config",
                f'profile.{profile}.codegen-backend="cranelift"',
                "--profile",
                profile,
            ]
    if flags and not reasons:
        variables, why = rustflags_env(flags, root, env, host)
        if why:
            reasons.append(why)
    if wrapper is not None:
        variables = {**variables, "RUSTC_WRAPPER": wrapper}
    return BuildConfig(
        name=canonical,
        available=not reasons,
        reason="; ".join(reasons) or None,
        toolchain=toolchain,
        cargo_args=tuple(args),
        env=variables,
        target_dir=target_dir / "rbd" / canonical,
        profile=profile,
    )


async def for_machine(
    names: Iterable[str], root: Path, target_dir: Path, env: dict[str, str]
) -> list[BuildConfig]:
    """The named configurations for the workspace at root on this machine, in the order
    given, each once (names that resolve alike count once). What they need from the
    toolchain (the host, a nightly, with cranelift or not) is probed, unless only `default`
    is asked for. An unknown or conflicting name raises ConfigError; one this machine lacks
    comes back with available False."""
    names = list(dict.fromkeys(names))
    host, cranelift, toolchain = "", None, None
    if any(name != "default" for name in names):
        found = await probe.probe(root, env)
        host = str(found.get("host") or "")
        nightly = found.get("nightly") or {}
        toolchain = nightly.get("toolchain")
        cranelift = toolchain if nightly.get("cranelift") else None
    chosen: dict[str, BuildConfig] = {}
    for name in names:
        resolved = resolve(name, root, target_dir, env, host, cranelift, nightly=toolchain)
        chosen.setdefault(resolved.name, resolved)
    return list(chosen.values())
