"""A tuning change: which keys of which file it sets, removes, or adds rustflags to.

Changes arrive as JSON (a suggestion's `change`, see daemon.advice.rules) and are checked
here before anything is edited: only Cargo.toml and .cargo/config.toml, key paths of two
or more printable names, values TOML and cargo both take (booleans, 64-bit integers,
strings), rustflags one argument per flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rbd.daemon.errors import ConfigError

FILES = ("Cargo.toml", ".cargo/config.toml")
KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class Change:
    file: str
    set: tuple[tuple[KeyPath, Any], ...] = ()
    remove: tuple[KeyPath, ...] = ()
    rustflags: tuple[KeyPath, tuple[str, ...]] | None = None


def key_path(key: Any, what: str) -> KeyPath:
    if (
        not isinstance(key, (list, tuple))
        or len(key) < 2
        or not all(isinstance(k, str) and k and k.isprintable() for k in key)
    ):
        raise ConfigError(f"{what} must be a list of two or more key names, got {key!r}")
    return tuple(key)


def validate(change: Change) -> None:
    if change.file not in FILES:
        raise ConfigError(f"file must be one of {', '.join(FILES)}, got {change.file!r}")
    for key, value in change.set:
        key_path(key, "a key to set")
        if not isinstance(value, (bool, int, str)) or (
            isinstance(value, int) and not -(2**63) <= value < 2**63
        ):
            raise ConfigError(
                f"{'.'.join(key)}: a value must be a boolean, a 64-bit integer "
                f"or a string, got {value!r}"
            )
    for key in change.remove:
        key_path(key, "a key to remove")
    if change.rustflags is not None:
        key, flags = change.rustflags
        if key_path(key, "the rustflags key")[-1] != "rustflags":
            raise ConfigError(f"the rustflags key must end in rustflags, got {'.'.join(key)}")
        if not flags or not all(isinstance(f, str) and f and f.split() == [f] for f in flags):
            raise ConfigError(
                "rustflags to add must be a non-empty list of flags, one argument "
                f'each ("-C", "opt-level=1"), got {list(flags)!r}'
            )


def change_from_json(data: Any) -> Change:
    if not isinstance(data, dict):
        raise ConfigError("a tuning change must be a JSON object")
    unknown = sorted(set(data) - {"file", "set", "remove", "rustflags"})
    if unknown:
        raise ConfigError(f"unknown field(s) in a tuning change: {', '.join(map(str, unknown))}")
    sets, removes, flags = data.get("set", []), data.get("remove", []), data.get("rustflags")
    if not isinstance(sets, list) or not isinstance(removes, list):
        raise ConfigError('"set" and "remove" must be lists')
    pairs = []
    for entry in sets:
        if not isinstance(entry, dict) or set(entry) != {"key", "value"}:
            raise ConfigError(
                f'each "set" entry must be {{"key": [...], "value": ...}}, got {entry!r}'
            )
        pairs.append((key_path(entry["key"], "a key to set"), entry["value"]))
    rustflags = None
    if flags is not None:
        if (
            not isinstance(flags, dict)
            or set(flags) != {"key", "add"}
            or not isinstance(flags["add"], list)
        ):
            raise ConfigError(f'"rustflags" must be {{"key": [...], "add": [...]}}, got {flags!r}')
        rustflags = (key_path(flags["key"], "the rustflags key"), tuple(flags["add"]))
    file = data.get("file")
    if not isinstance(file, str):
        raise ConfigError(f"file must be one of {', '.join(FILES)}, got {file!r}")
    change = Change(
        file, tuple(pairs), tuple(key_path(k, "a key to remove") for k in removes), rustflags
    )
    validate(change)
    return change


def change_to_json(change: Change) -> dict[str, Any]:
    flags = change.rustflags
    return {
        "file": change.file,
        "set": [{"key": list(key), "value": value} for key, value in change.set],
        "remove": [list(key) for key in change.remove],
        "rustflags": None if flags is None else {"key": list(flags[0]), "add": list(flags[1])},
    }
