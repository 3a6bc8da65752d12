"""What toolchain builds a project, and with which effective settings.

`rbd suggest` must measure the machine rather than assume it: which
rustc links with rust-lld by default, whether mold or a nightly with cranelift
exists, how much debuginfo the dev profile really asks for, and whether
rust-analyzer shares the target dir. This module gathers those facts as one
JSON-able dict, reading cargo's settings in cargo's own precedence order.
Nothing here raises: a tool that is missing, slow or broken gives null.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path, PurePath
from typing import Any

import anyio
import anyio.to_thread
import structlog

from rbd.daemon import tools
from rbd.daemon.build import cargo_config
from rbd.daemon.projects import tomlfile

log = structlog.get_logger("probe")

# Each subprocess is one quick query; a rustup proxy that hangs (a lock, the
# network) must not hold `rbd suggest` up for long.
PROBE_TIMEOUT_S = 10.0

CRANELIFT_COMPONENT = "rustc-codegen-cranelift-preview"
LINKERS = ("mold", "ld.lld", "ld.gold", "clang", "gcc")
# wild 0.11 needs rustc 1.99; 0.10.0 is the last that installs with an older one.
WILD_HINT = (
    "wild is not installed (no wild on PATH or in ~/.cargo/bin): cargo install --locked "
    "wild-linker (with a rustc older than 1.99: --version 0.10.0)"
)

# cargo's built-in dev profile; split-debuginfo None means the platform default.
PROFILE_DEFAULTS: dict[str, Any] = dict(
    debug=2, split_debuginfo=None, opt_level=0, codegen_units=256, incremental=True,
    codegen_backend=None,
)  # fmt: skip
# The profile keys `[profile.dev.package."*"]` is reported for.
DEPS_KEYS = ("debug", "opt_level")
DEFAULT_SOURCE = "default"

# A string (kept), a comment or a trailing comma (both dropped), in the order they start.
_COMMENT = r"//[^\n]*|/\*(?:[^*]|\*(?!/))*\*/"  # a block comment ends at its first */
_JSONC = re.compile(rf'"(?:\\.|[^"\\])*"|{_COMMENT}|,(?=(?:\s|{_COMMENT})*[}}\]])')
_DEBUG_NAMES = {"full": 2, "limited": 1, "none": 0, "true": 2, "false": 0}


def normalize_debug(value: Any) -> int | str:
    """A `debug` setting as cargo means it: 0, 1, 2, or "line-tables-only" /
    "line-directives-only" (any other string is passed through as is)."""
    if isinstance(value, bool | int):
        return 2 if value is True else int(value)
    text = str(value).strip()
    return int(text) if text.isdigit() else _DEBUG_NAMES.get(text, text)


def normalize_opt_level(value: Any) -> int | str:
    """An `opt-level`: 0..3 as an int, "s" / "z" as strings."""
    text = str(value).strip()
    return int(text) if text.isdigit() else text


def parse_env_value(text: str) -> bool | int | str:
    """A config value given as an environment variable, typed the way cargo reads it."""
    if text in ("true", "false"):
        return text == "true"
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def parse_version(text: str | None) -> tuple[int, int, int] | None:
    """(major, minor, patch) from "1.95.0", "1.96.0-nightly" or a `--version` line."""
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", text or "")
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def format_version(text: str | None) -> str | None:
    """The version in text ("cargo 1.96.0-nightly (...)") as "1.96.0", or None."""
    version = parse_version(text)
    return ".".join(map(str, version)) if version else None


def channel_of(release: str) -> str:
    """The release channel a version string like "1.96.0-beta.2" belongs to."""
    if "-nightly" in release or "-dev" in release:
        return "nightly"
    return "beta" if "-beta" in release else "stable"


def default_linker(host: str | None, rustc_version: str | None) -> str | None:
    """What rustc links with when nothing is configured (None without a rustc):
    its bundled rust-lld on x86_64 Linux since 1.90, the system `cc` elsewhere."""
    version = parse_version(rustc_version)
    if host is None or version is None:
        return None
    return "rust-lld" if host == "x86_64-unknown-linux-gnu" and version >= (1, 90, 0) else "cc"


def strip_jsonc(text: str) -> str:
    """JSON with comments and trailing commas (VS Code's settings.json) as plain JSON.
    Strings are matched first so a `//` inside one (a URL, a path) stays."""
    return _JSONC.sub(lambda m: m[0] if m[0].startswith('"') else "", text)


def _jsonc(text: str) -> Any:
    return json.loads(strip_jsonc(text))


def _read(path: Path, parse: Callable[[str], Any] | None = None) -> Any:
    """A file's parsed contents (TOML, or else by parse); None when it is absent or (with
    a warning) unreadable or larger than tomlfile.MAX_TOML_BYTES: a broken file is the
    tool's own to report, a probe just knows less."""
    try:
        if parse is None:
            return tomlfile.read(path)
        with path.open("rb") as f:
            data = f.read(tomlfile.MAX_TOML_BYTES + 1)
        if len(data) > tomlfile.MAX_TOML_BYTES:
            raise ValueError(f"larger than {tomlfile.MAX_TOML_BYTES >> 20} MiB")
        return parse(data.decode())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and parse errors are ValueErrors
        log.warning("probe_file_unreadable", path=str(path), error=str(exc))
        return None


def _table(data: Any, *keys: str) -> dict[str, Any]:
    for key in keys:
        data = data.get(key) if isinstance(data, dict) else None
    return data if isinstance(data, dict) else {}


def effective_profile(
    root: Path, env: dict[str, str], files: list[cargo_config.ConfigFile]
) -> dict[str, Any]:
    """The dev profile workspace members (and, as deps_*, all other packages) build
    with, and under "sources" where each value came from."""
    # Lowest precedence first: the root manifest (the only one whose profiles
    # count), then config files from the farthest to the closest.
    manifest = root / "Cargo.toml"
    layers = [(_table(_read(manifest), "profile", "dev"), str(manifest))]
    layers += [(_table(f.data, "profile", "dev"), str(f.path)) for f in reversed(files)]
    profile = dict(PROFILE_DEFAULTS)
    sources = dict.fromkeys(PROFILE_DEFAULTS, DEFAULT_SOURCE)
    deps: dict[str, tuple[Any, str]] = {}
    for table, where in layers:
        star = _table(table, "package", "*")
        for key in PROFILE_DEFAULTS:
            name = key.replace("_", "-")
            if name in table:
                profile[key], sources[key] = table[name], where
            if key in DEPS_KEYS and name in star:
                deps[key] = (star[name], where)
    for key in PROFILE_DEFAULTS:
        var = "CARGO_PROFILE_DEV_" + key.upper()
        if var in env:
            profile[key], sources[key] = parse_env_value(env[var]), var
    # build.incremental, then CARGO_INCREMENTAL, override every profile's setting.
    found = cargo_config.lookup(files, "build", "incremental")
    if found is not None and isinstance(found[0], bool):
        profile["incremental"], sources["incremental"] = found[0], str(found[1].path)
    for var, on in (("CARGO_BUILD_INCREMENTAL", "true"), ("CARGO_INCREMENTAL", "1")):
        if var in env:
            profile["incremental"], sources["incremental"] = env[var] == on, var
    # No environment variable reaches package."*": cargo has none for it.
    for key in DEPS_KEYS:
        profile["deps_" + key], sources["deps_" + key] = deps.get(key, (profile[key], sources[key]))
    for key in ("debug", "deps_debug"):
        profile[key] = normalize_debug(profile[key])
    for key in ("opt_level", "deps_opt_level"):
        profile[key] = normalize_opt_level(profile[key])
    return {**profile, "sources": sources}


def linker_in_effect(
    default: str | None,
    driver: str | None,
    driver_source: str | None,
    rustflags: list[str],
    rustflags_from: list[str],
) -> str | None:
    """What the configuration says links host binaries, in words ("clang + lld
    (/p/.cargo/config.toml)", "rust-lld (rustc's default)"); None without a rustc.

    default: default_linker's answer; driver: configured_linker's; rustflags: the
    effective ones. The linker is the last `-fuse-ld=` or `--ld-path=` link argument
    (the C compiler takes the last), a `-Clinker=` flag replaces the configured driver.
    On the rust-lld host a bare `-fuse-ld=lld` still finds rustc's bundled rust-lld
    first (daemon.build.configurations), which the builds' own record (their `linker`,
    read from the binary) shows; this says what was asked for."""
    linker: str | None = None
    words = iter(rustflags)
    for word in words:
        value = next(words, "") if word == "-C" else word[2:] if word.startswith("-C") else ""
        key, _, rest = value.partition("=")
        if key == "linker" and rest:
            driver, driver_source = rest, driver_source or ", ".join(rustflags_from)
        elif key in ("link-arg", "link-args"):
            for arg in rest.split():
                if arg.startswith("-fuse-ld="):
                    linker = arg.removeprefix("-fuse-ld=")
                elif arg.startswith("--ld-path="):
                    linker = PurePath(arg.removeprefix("--ld-path=")).name
    if default is None and driver is None and linker is None:
        return None
    if linker is None and driver is None:
        return f"{default} (rustc's default)"
    parts = [PurePath(driver).name if driver else None, linker]
    named = " + ".join(p for p in parts if p)
    if linker is None:
        named += f", no linker chosen (rustc's default here: {default})"
    sources = [driver_source] if driver_source and driver else []
    if linker is not None:
        sources += rustflags_from
    sources = list(dict.fromkeys(sources))
    return named + (f"; set in {', '.join(sources)}" if sources else "")


def _host_var(host: str, key: str) -> str:
    return f"CARGO_TARGET_{host.upper().replace('-', '_').replace('.', '_')}_{key}"


def configured_linker(
    host: str | None, env: dict[str, str], files: list[cargo_config.ConfigFile]
) -> tuple[str | None, str | None]:
    """The linker configured for host, and where: its environment variable or file."""
    if host is None:
        return None, None
    var = _host_var(host, "LINKER")
    if env.get(var):
        return env[var], var
    found = cargo_config.lookup(files, "target", host, "linker")
    if found is None or not isinstance(found[0], str):
        return None, None
    return cargo_config.program(found[0], found[1].base), str(found[1].path)


def _config_flags(
    files: list[cargo_config.ConfigFile], env: dict[str, str], keys: list[str], var: str
) -> tuple[list[str], list[str]] | None:
    # cargo joins arrays from every file (farther first), a string replaces what
    # came before, and the environment variable's flags come last.
    flags: list[str] | None = None
    where: list[str] = []
    for config in reversed(files):
        value = (cargo_config.lookup([config], *keys) or (None,))[0]
        if isinstance(value, list):
            flags, where = [*(flags or []), *map(str, value)], [*where, str(config.path)]
        elif isinstance(value, str):
            flags, where = value.split(), [str(config.path)]
    if var in env:
        flags, where = [*(flags or []), *env[var].split()], [*where, var]
    return None if flags is None else (flags, where)


def effective_rustflags(
    host: str | None, env: dict[str, str], files: list[cargo_config.ConfigFile]
) -> tuple[list[str], str | None, list[str]]:
    """The flags cargo passes rustc for host builds, the setting they came from (the
    first one set wins whole, as in cargo) and the files or variables holding them."""
    for var in ("CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS"):
        if var in env:
            value = env[var]
            flags = (value.split("\x1f") if value else []) if "ENCODED" in var else value.split()
            return flags, var, [var]
    # target.'cfg(...)'.rustflags would join the host's: cfg expressions are not evaluated.
    levels = [(["build", "rustflags"], "CARGO_BUILD_RUSTFLAGS")]
    if host is not None:
        levels.insert(0, (["target", host, "rustflags"], _host_var(host, "RUSTFLAGS")))
    for keys, var in levels:
        found = _config_flags(files, env, keys, var)
        if found is not None:
            return found[0], ".".join(keys), found[1]
    return [], None, []


def rust_analyzer_settings(root: Path) -> dict[str, Any]:
    """Whether rust-analyzer builds in cargo's target dir (then its checks and rbd's
    builds wait for each other's lock) or in a dir of its own."""
    result: dict[str, Any] = {"target_dir": None, "shares_target_dir": None, "source": None}
    # The project's rust-analyzer.toml is taken to override the editor's settings.
    for path, keys in (
        (root / ".vscode" / "settings.json", ["rust-analyzer.cargo.targetDir"]),
        (root / "rust-analyzer.toml", ["cargo", "targetDir"]),
    ):
        data = _read(path, None if path.suffix == ".toml" else _jsonc)
        if not isinstance(data, dict):
            continue
        table = _table(data, *keys[:-1])
        if keys[-1] in table:
            value = table[keys[-1]]
            # true or a path: a dir of its own; false or absent: cargo's.
            result.update(target_dir=value, shares_target_dir=not value, source=str(path))
        elif result["source"] is None:
            result.update(shares_target_dir=True, source=str(path))
    return result


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def wild_program(env: dict[str, str]) -> str | None:
    """The wild linker on env's PATH, else where `cargo install` puts it ($CARGO_HOME/bin,
    ~/.cargo/bin), which a daemon started outside a login shell may not have on PATH."""
    found = shutil.which("wild", path=env.get("PATH", os.defpath))
    if found is not None:
        return found
    home = env.get("CARGO_HOME") or os.path.join(
        env.get("HOME") or os.path.expanduser("~"), ".cargo"
    )
    candidate = os.path.join(home, "bin", "wild")
    return candidate if os.access(candidate, os.X_OK) and os.path.isfile(candidate) else None


def _settings(root: Path, env: dict[str, str], host: str | None) -> dict[str, Any]:
    """Everything read from files and PATH (blocking, for a worker thread)."""
    files = cargo_config.load(root, env)
    linker, linker_source = configured_linker(host, env, files)
    rustflags, rustflags_source, rustflags_from = effective_rustflags(host, env, files)
    paths = env.get("PATH", os.defpath)
    return {
        "linkers": {
            **{name: shutil.which(name, path=paths) for name in LINKERS},
            "wild": wild_program(env),
        },
        "rustup": shutil.which("rustup", path=paths),
        "cores": available_cores(),
        "sccache": shutil.which("sccache", path=paths),
        "rustc_wrapper": cargo_config.rustc_wrapper(root, env),
        "profile": effective_profile(root, env, files),
        "linker": linker,
        "linker_source": linker_source,
        "rustflags": rustflags,
        "rustflags_source": rustflags_source,
        "rustflags_from": rustflags_from,
        "env": {k: v for k, v in sorted(env.items()) if k.startswith(("CARGO_", "RUST"))},
        "rust_analyzer": rust_analyzer_settings(root),
    }


async def _run(argv: list[str], root: Path, env: dict[str, str]) -> str:
    """A tool's stdout; "" when it is missing, fails or takes too long."""
    return await tools.output(argv, root, env, PROBE_TIMEOUT_S, "probe_tool_failed") or ""


async def _nightly(root: Path, env: dict[str, str]) -> dict[str, Any]:
    listing = await _run(["rustup", "toolchain", "list"], root, env)
    names = [line.split()[0] for line in listing.splitlines() if line.strip()]
    toolchain = next((name for name in names if name.startswith("nightly")), None)
    cranelift = False
    if toolchain is not None:
        argv = ["rustup", "component", "list", "--toolchain", toolchain, "--installed"]
        installed = (await _run(argv, root, env)).split()
        cranelift = any(name.startswith(CRANELIFT_COMPONENT) for name in installed)
    return {"toolchain": toolchain, "cranelift": cranelift}


# The tools' answers (cargo, rustc, rustup's toolchains) per tools.toolchain_key: they
# were 30 of `suggest`'s 31 ms; the key's stat calls take under 0.2 ms. A few toolchains
# at once (projects pinning different ones).
_ASKED: dict[tuple[Any, ...], dict[str, Any]] = {}
MAX_ASKED = 8


async def probe(root: Path, env: dict[str, str]) -> dict[str, Any]:
    """The toolchain and the effective build settings builds of root see with env. The
    tools are asked once per toolchain (see _ASKED); the files are read every time."""
    key = tools.toolchain_key(root, env, "rustc")
    out = _ASKED.get(key)
    if out is None:
        out = {}

        async def into(name: str, work: Awaitable[Any]) -> None:
            out[name] = await work

        async with anyio.create_task_group() as group:
            group.start_soon(into, "cargo", _run(["cargo", "--version"], root, env))
            group.start_soon(into, "rustc", _run(["rustc", "-vV"], root, env))
            group.start_soon(into, "nightly", _nightly(root, env))
        if out["rustc"] and out["cargo"]:
            # A tool that failed is asked again next time, not remembered failing.
            _ASKED[key] = out
            while len(_ASKED) > MAX_ASKED:
                del _ASKED[next(iter(_ASKED))]
    # `rustc -vV`: "release: 1.95.0", "host: x86_64-unknown-linux-gnu", ...
    fields = dict(re.findall(r"^([\w-]+): *(.*?)\s*$", out["rustc"], re.M))
    release, host = fields.get("release"), fields.get("host")
    settings = await anyio.to_thread.run_sync(_settings, root, env, host)
    rustc_version, cargo_version = format_version(release), format_version(out["cargo"])
    return {
        "cargo_version": cargo_version,
        "rustc_version": rustc_version,
        "channel": channel_of(release) if release else None,
        "host": host,
        "default_linker": default_linker(host, rustc_version),
        **settings,
        "linker_in_effect": linker_in_effect(
            default_linker(host, rustc_version),
            settings["linker"],
            settings["linker_source"],
            settings["rustflags"],
            settings["rustflags_from"],
        ),
        "nightly": out["nightly"],
    }
