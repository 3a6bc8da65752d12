"""The cargo configuration a build of a project sees, read the way cargo reads it.

cargo looks for `.cargo/config.toml` (or the older `.cargo/config`, which
wins when both exist) in the project directory and every parent, then in
`$CARGO_HOME`. A value in a closer file overrides a farther one. Program
paths with a slash are relative to the directory holding that `.cargo`.
Environment variables override files (e.g. `RUSTC_WRAPPER`, then
`CARGO_BUILD_RUSTC_WRAPPER`, over `build.rustc-wrapper`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from rbd.daemon.projects import tomlfile

log = structlog.get_logger("cargoconfig")


@dataclass(frozen=True)
class ConfigFile:
    path: Path
    data: dict[str, Any]

    @property
    def base(self) -> Path:
        """The directory relative paths in this file are resolved against."""
        return self.path.parent.parent


def cargo_home(env: dict[str, str]) -> Path:
    home = env.get("CARGO_HOME")
    if home:
        return Path(home)
    return Path(env.get("HOME") or os.path.expanduser("~")) / ".cargo"


def _candidates(root: Path, env: dict[str, str]) -> list[Path]:
    dirs = [root, *root.parents]
    found: list[Path] = []
    for directory in dirs:
        for name in ("config", "config.toml"):
            path = directory / ".cargo" / name
            if path.is_file():
                found.append(path)
                break
    home = cargo_home(env)
    for name in ("config", "config.toml"):
        path = home / name
        if path.is_file():
            if all(path.resolve() != f.resolve() for f in found):
                found.append(path)
            break
    return found


def load(root: Path, env: dict[str, str]) -> list[ConfigFile]:
    """The config files that apply to root, closest first. A file that does not
    parse is skipped with a warning: cargo reports it itself when it builds."""
    files = []
    for path in _candidates(root, env):
        try:
            files.append(ConfigFile(path, tomlfile.read(path)))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError, TOMLDecodeError, too large
            log.warning("cargo_config_unreadable", path=str(path), error=str(exc))
    return files


def lookup(files: list[ConfigFile], *keys: str) -> tuple[Any, ConfigFile] | None:
    """The closest value at the dotted key path, with the file it came from."""
    for config in files:
        value: Any = config.data
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            return value, config
    return None


def program(value: str, base: Path) -> str:
    """A configured program: a bare name is looked up on PATH when run, a path
    with a slash is taken relative to base."""
    if "/" in value and not os.path.isabs(value):
        return str(base / value)
    return value


def rustc_wrapper(root: Path, env: dict[str, str]) -> str | None:
    """The user's own rustc wrapper (sccache...) for builds of root, or None."""
    for name in ("RUSTC_WRAPPER", "CARGO_BUILD_RUSTC_WRAPPER"):
        if name in env:
            # Set but empty means "no wrapper", as it does for cargo.
            return program(env[name], root) if env[name] else None
    found = lookup(load(root, env), "build", "rustc-wrapper")
    if found is None or not isinstance(found[0], str) or not found[0]:
        return None
    return program(found[0], found[1].base)
