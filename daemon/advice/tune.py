"""Tuning changes written into a project's Cargo.toml or .cargo/config.toml, and taken back.

Those files belong to the user, so an edit keeps every comment, blank line, key order and
quoting style: tomlkit edits the parsed document in place, a table that does not exist yet
goes at the end as its own `[section]`, and every edit keeps the exact bytes from before it
so that revert restores them. cargo itself checks a change before it is kept.

The check, chosen by measuring the candidates (cargo 1.95, small crates and a workspace):
`cargo clean --dry-run --workspace --offline` on scratch target/build dirs, 15-40 ms. It
parses both files, validates Cargo.toml's profiles (as `cargo metadata --no-deps` does, which
takes 15 ms), every built-in profile in the config (dev, release, test, bench: `metadata`
and `tree` never read those) and, with `--profile NAME`, a custom one (read only when asked
for), and runs rustc once with the configured rustflags, which rejects unknown `-C`/`-Z`
options. It compiles nothing, writes no Cargo.lock and waits for no build's lock, unlike
`cargo check --examples` (a no-op only without examples) or `cargo check` (a full rebuild
after a profile change); `--unit-graph` and `--build-plan` are nightly-only. It cannot catch
what only rustc or the linker judges while compiling (`opt-level = 7`, `lto = "bogus"`, a
missing linker, `-fuse-ld=mold` without mold); unknown keys are warnings to cargo, not
errors. Offline, the dependencies must resolve from cargo's cache (once the project built).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import secrets
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import tomlkit
from tomlkit.container import Container
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import (
    AoT,
    Array,
    InlineTable,
    Item,
    Key,
    Null,
    SingleKey,
    String,
    StringType,
    Table,
    Whitespace,
)

from rbd.daemon.errors import ConfigError, TuneConflict, TuneRejected
from rbd.daemon.projects.workspace import require_cargo

FILES = ("Cargo.toml", ".cargo/config.toml")
CHECK_TIMEOUT_S = 60.0
BUILTIN_PROFILES = ("dev", "release", "test", "bench")
KeyPath = tuple[str, ...]
Node = Container | Table | InlineTable
Level = list[tuple[Node, Key, Table | InlineTable]]
# Options whose value may be attached ("-Cx") or the next argument ("-C x").
_TAKES_VALUE = {
    f: f
    for f in (
        "-C",
        "-Z",
        "-L",
        "-l",
        "-A",
        "-W",
        "-D",
        "-F",
        "--cfg",
        "--check-cfg",
        "--cap-lints",
        "--target",
        "--edition",
    )
}
_TAKES_VALUE["--codegen"] = "-C"
_LITERAL = (StringType.SLL, StringType.MLL)


@dataclass(frozen=True)
class Change:
    file: str
    set: tuple[tuple[KeyPath, Any], ...] = ()
    remove: tuple[KeyPath, ...] = ()
    rustflags: tuple[KeyPath, tuple[str, ...]] | None = None


@dataclass(frozen=True)
class FileEdit:
    path: Path
    before: bytes | None
    after: bytes
    diff: str


def _key_path(key: Any, what: str) -> KeyPath:
    if (
        not isinstance(key, (list, tuple))
        or len(key) < 2
        or not all(isinstance(k, str) and k and k.isprintable() for k in key)
    ):
        raise ConfigError(f"{what} must be a list of two or more key names, got {key!r}")
    return tuple(key)


def _validate(change: Change) -> None:
    if change.file not in FILES:
        raise ConfigError(f"file must be one of {', '.join(FILES)}, got {change.file!r}")
    for key, value in change.set:
        _key_path(key, "a key to set")
        if not isinstance(value, (bool, int, str)) or (
            isinstance(value, int) and not -(2**63) <= value < 2**63
        ):
            raise ConfigError(
                f"{'.'.join(key)}: a value must be a boolean, a 64-bit integer "
                f"or a string, got {value!r}"
            )
    for key in change.remove:
        _key_path(key, "a key to remove")
    if change.rustflags is not None:
        key, flags = change.rustflags
        if _key_path(key, "the rustflags key")[-1] != "rustflags":
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
        pairs.append((_key_path(entry["key"], "a key to set"), entry["value"]))
    rustflags = None
    if flags is not None:
        if (
            not isinstance(flags, dict)
            or set(flags) != {"key", "add"}
            or not isinstance(flags["add"], list)
        ):
            raise ConfigError(f'"rustflags" must be {{"key": [...], "add": [...]}}, got {flags!r}')
        rustflags = (_key_path(flags["key"], "the rustflags key"), tuple(flags["add"]))
    file = data.get("file")
    if not isinstance(file, str):
        raise ConfigError(f"file must be one of {', '.join(FILES)}, got {file!r}")
    change = Change(
        file, tuple(pairs), tuple(_key_path(k, "a key to remove") for k in removes), rustflags
    )
    _validate(change)
    return change


def change_to_json(change: Change) -> dict[str, Any]:
    flags = change.rustflags
    return {
        "file": change.file,
        "set": [{"key": list(key), "value": value} for key, value in change.set],
        "remove": [list(key) for key in change.remove],
        "rustflags": None if flags is None else {"key": list(flags[0]), "add": list(flags[1])},
    }


def _parse(text: str) -> tomlkit.TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(f"not valid TOML: {exc}") from exc


def _body(node: Node) -> list[tuple[Key | None, Item]]:
    return node.body if isinstance(node, Container) else node.value.body


def _walk(doc: Container, keys: KeyPath) -> list[Level]:
    """Every part of the table at each prefix of keys (with its parent), while they exist.
    A table can have several parts: dotted keys, out-of-order `[sections]`."""
    levels: list[Level] = []
    parents: list[Node] = [doc]
    for depth, name in enumerate(keys):
        level: Level = []
        for parent in parents:
            for key, item in _body(parent):
                if key is None or key.key != name:
                    continue
                if not isinstance(item, (Table, InlineTable)):
                    raise ConfigError(f"{'.'.join(keys[: depth + 1])} is not a table")
                level.append((parent, key, item))
        if not level:
            break
        levels.append(level)
        parents = [table for _, _, table in level]
    return levels


def _find(level: Level, name: str) -> tuple[Table | InlineTable, Item] | None:
    for _, _, table in level:
        for key, item in table.value.body:
            if key is not None and key.key == name:
                if isinstance(item, (Table, InlineTable, AoT)):
                    raise ConfigError(f"{name} is a table, not a value")
                return table, item
    return None


def _strings(node: Any) -> Iterator[String]:
    if isinstance(node, String):
        yield node
    elif isinstance(node, (Container, Table, InlineTable)):
        for _, item in _body(node):
            yield from _strings(item)
    elif isinstance(node, (Array, AoT)):
        for item in node:
            yield from _strings(item)


def _literal(node: Any) -> bool:
    """Whether new strings should be 'literal': the ones already there all are."""
    found = [s.type in _LITERAL for s in _strings(node)]
    return bool(found) and all(found)


def _item(value: Any, literal: bool) -> Item:
    if isinstance(value, list):
        array = tomlkit.array()
        array.extend(_item(v, literal) for v in value)
        return array
    if isinstance(value, str) and literal and "'" not in value and value.isprintable():
        return tomlkit.string(value, literal=True)
    made = tomlkit.item(value)
    assert isinstance(made, Item)
    return made


def _tidy_inline(table: InlineTable, before: str) -> None:
    # tomlkit leaves stray spaces and commas when an inline table gains or loses a key:
    # respace it the way it was written ("{ a = 1, b = 2 }" or "{a=1,b=2}").
    pad = " " if before.startswith("{ ") else ""
    gap = " " if pad or ", " in before else ""
    body = table.value.body
    for i, (key, _) in enumerate(body):
        if key is None:
            body[i] = (None, Null())  # same slot: the container's index stays valid
    entries = [item for key, item in body if key is not None]
    for n, item in enumerate(entries):
        item.trivia.indent = pad if n == 0 else gap
        item.trivia.trail = pad if n == len(entries) - 1 else ""


def _add_inline(table: InlineTable, name: str, item: Item) -> None:
    before = table.as_string()
    # A parsed key keeps the spaces before its "=" in its text, not in its sep.
    seps = [k.as_string()[len(k.as_string().rstrip()) :] + k.sep for k, _ in table.value.body if k]
    table[SingleKey(name, sep=seps[0] if seps else " = ")] = item
    _tidy_inline(table, before)


def _insert_key(table: Table, name: str, item: Item) -> None:
    """Below the table's last key: not after the comments and blank lines that end the
    table's text (they introduce the next section), nor after a sub-table's header."""
    body = table.value.body
    index, indent = 0, ""
    for i, (key, value) in enumerate(body):
        if key is None:
            continue
        if isinstance(value, (Table, AoT)) and not key.is_dotted():
            break
        index, indent = i + 1, value.trivia.indent
    item.trivia.indent = indent
    if index < len(body):
        table.value._insert_at(index, name, item)  # no public insert-at-position
    else:
        table.append(name, item)


def _set(text: str, path: KeyPath, value: Any) -> str:
    doc = _parse(text)
    keys, name = path[:-1], path[-1]
    levels = _walk(doc, keys)
    if len(levels) == len(keys):
        found = _find(levels[-1], name)
        if found is not None:
            table, old = found
            literal = isinstance(old, String) and old.type in _LITERAL
            table[name] = _item(value, literal)  # tomlkit keeps the old item's comment
            return doc.as_string()
    item = _item(value, _literal(doc))
    parts = [table for _, _, table in levels[-1]] if levels else []
    inline = next((t for t in parts if isinstance(t, InlineTable)), None)
    if inline is not None and len(levels) < len(keys):
        # An inline table is closed: the missing tables go inside it, inline too.
        pad = " " if inline.as_string().startswith("{ ") else ""
        nested = f"{SingleKey(name).as_string()} = {item.as_string()}"
        for missing in reversed(keys[len(levels) + 1 :]):
            nested = f"{SingleKey(missing).as_string()} = {{{pad}{nested}{pad}}}"
        new = _parse(f"v = {{{pad}{nested}{pad}}}\n").item("v")
        assert isinstance(new, InlineTable)
        _add_inline(inline, keys[len(levels)], new)
    elif len(levels) < len(keys):
        return _append_section(text, keys, name, item)
    elif inline is not None:
        _add_inline(inline, name, item)
    elif concrete := [t for t in parts if isinstance(t, Table) and not t.is_super_table()]:
        _insert_key(concrete[0], name, item)
    elif dotted := [t for _, key, t in levels[-1] if key.is_dotted()]:
        dotted[-1][name] = item  # renders as one more `a.b = ...` line
    else:  # only implied by `[a.b.c]` headers: no body of its own to add to
        return _append_section(text, keys, name, item)
    return doc.as_string()


def _append_section(text: str, keys: KeyPath, name: str, item: Item) -> str:
    if text and not text.endswith("\n"):
        text += "\n"
    if text.strip() and not text.endswith("\n\n"):
        text += "\n"
    header = ".".join(SingleKey(k).as_string() for k in keys)
    return f"{text}[{header}]\n{SingleKey(name).as_string()} = {item.as_string()}\n"


def _empty(table: Table | InlineTable) -> bool:
    # A comment keeps a table: it may be all that is left of the user's notes.
    return not table.trivia.comment and all(
        key is None and isinstance(item, (Whitespace, Null)) for key, item in table.value.body
    )


def _remove(text: str, path: KeyPath) -> str:
    doc = _parse(text)
    levels = _walk(doc, path[:-1])
    found = _find(levels[-1], path[-1]) if len(levels) == len(path) - 1 else None
    if found is None:
        return text
    victim, _ = found
    before = victim.as_string()
    victim.remove(path[-1])
    if isinstance(victim, InlineTable):
        _tidy_inline(victim, before)
    for level in reversed(levels):
        parent = next(p for p, _, table in level if table is victim)
        if not _empty(victim):
            break
        container = parent if isinstance(parent, Container) else parent.value
        before = parent.as_string()
        index = next(i for i, (_, item) in enumerate(container.body) if item is victim)
        container._remove_at(index)  # by position: out-of-order parts share their key
        if isinstance(parent, InlineTable):
            _tidy_inline(parent, before)
        if isinstance(parent, Container):
            break
        victim = parent
    return doc.as_string()


def _units(tokens: list[str]) -> list[tuple[tuple[str, ...], list[str]]]:
    """Flags as rustc reads them, e.g. "-Cx", "-C x" and "--codegen=x" are all ("-C", "x")."""
    units: list[tuple[tuple[str, ...], list[str]]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        name, eq, value = token.partition("=")
        if token in _TAKES_VALUE and i + 1 < len(tokens):
            units.append(((_TAKES_VALUE[token], tokens[i + 1]), tokens[i : i + 2]))
            i += 2
            continue
        if token.startswith("--") and eq and name in _TAKES_VALUE:
            units.append(((_TAKES_VALUE[name], value), [token]))
        elif not token.startswith("--") and token[:2] in _TAKES_VALUE and len(token) > 2:
            units.append(((token[:2], token[2:]), [token]))
        else:
            units.append(((token,), [token]))
        i += 1
    return units


def _add_rustflags(text: str, path: KeyPath, flags: tuple[str, ...]) -> str:
    doc = _parse(text)
    levels = _walk(doc, path[:-1])
    found = _find(levels[-1], path[-1]) if len(levels) == len(path) - 1 else None
    if found is None:
        return _set(text, path, list(flags))
    table, old = found
    if isinstance(old, Array) and all(isinstance(f, String) for f in old):
        have, literal = [str(f) for f in old], _literal(old)
    elif isinstance(old, String):
        # cargo splits string-form rustflags on whitespace
        have, literal = str(old).split(), old.type in _LITERAL
    else:
        raise ConfigError(f"{'.'.join(path)} is neither a list of strings nor a string")
    seen = {unit for unit, _ in _units(have)}
    add: list[str] = []
    for unit, tokens in _units(list(flags)):
        if unit not in seen:
            seen.add(unit)
            add.extend(tokens)
    if not add:
        return text
    if isinstance(old, Array):
        for flag in add:
            old.append(_item(flag, literal))
    else:
        table[path[-1]] = _item(" ".join([str(old).rstrip(), *add]).lstrip(), literal)
    return doc.as_string()


def edit_text(text: str, changes: list[Change]) -> str:
    """text with the changes made (all to one file); ConfigError if they cannot be."""
    out = text
    for change in changes:
        _validate(change)
        for path, value in change.set:
            out = _set(out, path, value)
        for path in change.remove:
            out = _remove(out, path)
        if change.rustflags is not None:
            out = _add_rustflags(out, *change.rustflags)
    if out == text:
        return text
    _parse(out)
    if out.endswith("\n\n") and not text.endswith("\n\n"):
        out = out.rstrip("\n") + "\n"  # a table removed at the end leaves its blank line
    if "\r\n" in text and "\n" not in text.replace("\r\n", ""):
        out = out.replace("\r\n", "\n").replace("\n", "\r\n")
    return out


def _diff(file: str, before: str, after: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{file}", f"b/{file}"
    )
    return "".join(
        line if line.endswith("\n") else f"{line}\n\\ No newline at end of file\n" for line in lines
    )


def plan(root: Path, changes: list[Change]) -> list[FileEdit]:
    root = root.absolute()
    groups: dict[str, list[Change]] = {}
    for change in changes:
        _validate(change)
        groups.setdefault(change.file, []).append(change)
    edits = []
    for file, group in groups.items():
        if file == ".cargo/config.toml" and (root / ".cargo" / "config").is_file():
            raise ConfigError(
                "this project has the older .cargo/config, which cargo reads "
                "instead of .cargo/config.toml: rename it to config.toml first"
            )
        path = root / file
        before = path.read_bytes() if path.exists() else None
        try:
            text = (before or b"").decode()
            after = edit_text(text, group)
        except (UnicodeDecodeError, ConfigError) as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        if after.encode() != (before or b""):
            edits.append(FileEdit(path, before, after.encode(), _diff(file, text, after)))
    return edits


def write_atomic(path: Path, data: bytes) -> None:
    # Through a symlink, its target gets the bytes and the link stays a link.
    target = Path(os.path.realpath(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode: int | None = stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        mode = None
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.rbd-tmp")
    # Mode 0o666 less the umask, as any new file gets (mkstemp's would be 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _restore(edit: FileEdit) -> None:
    if edit.before is not None:
        write_atomic(edit.path, edit.before)
        return
    with contextlib.suppress(FileNotFoundError):
        edit.path.unlink()
    if edit.path.parent.name == ".cargo":
        with contextlib.suppress(OSError):  # not empty: it holds more than our file
            edit.path.parent.rmdir()


async def _cargo_error(
    cargo: str, root: Path, env: dict[str, str], profiles: list[str]
) -> str | None:
    """None if cargo accepts the project's configuration, else cargo's error. A custom
    profile defined in a config file is only read when asked for: profiles names them."""
    with tempfile.TemporaryDirectory(prefix="rbd-tune-") as scratch:
        # Scratch dirs: no wait for a running build's lock, nothing written to the user's.
        clean = [
            "clean",
            "--dry-run",
            "--workspace",
            "--offline",
            "--target-dir",
            scratch,
            "--config",
            f"build.build-dir='{scratch}/build'",
        ]
        queue = [[*clean, "--profile", name] for name in profiles] or [clean]
        while queue:
            args = queue.pop(0)
            try:
                with anyio.fail_after(CHECK_TIMEOUT_S):
                    done = await anyio.run_process(
                        [cargo, *args], cwd=root, env=env, check=False, stdin=subprocess.DEVNULL
                    )
            except TimeoutError:
                return f"`cargo {args[0]}` did not answer within {CHECK_TIMEOUT_S:.0f} s"
            if done.returncode == 0:
                continue
            stderr = done.stderr.decode(errors="replace").strip()
            if args[0] == "clean" and done.returncode == 1 and "unexpected argument" in stderr:
                # A cargo older than clean's flags gets the weaker check.
                queue = [["metadata", "--format-version", "1", "--no-deps", "--offline"]]
                continue
            lines = stderr.splitlines()
            start = next((i for i, line in enumerate(lines) if line.startswith("error")), 0)
            return "\n".join(lines[start:])[:4000] or "cargo failed without a message"
    return None


async def apply(
    root: Path, env: dict[str, str], changes: list[Change], dry_run: bool = False
) -> list[FileEdit]:
    edits = await anyio.to_thread.run_sync(plan, root, changes)
    if dry_run or not edits:
        return edits
    cargo = require_cargo(env)
    written: list[FileEdit] = []
    try:
        for edit in edits:
            write_atomic(edit.path, edit.after)
            written.append(edit)
        # A profile with a codegen backend (cranelift) is for nightly cargo: stable cargo
        # refuses it only when asked to build it, so it is left out of the check, and the
        # check without it is what proves the user's stable builds still work.
        nightly_only = {
            key[1]
            for change in changes
            for key, _ in change.set
            if key[0] == "profile" and key[-1] == "codegen-backend"
        }
        profiles = sorted(
            {
                key[1]
                for change in changes
                for key, _ in change.set
                if key[0] == "profile" and key[1] not in BUILTIN_PROFILES
            }
            - nightly_only
        )
        error = await _cargo_error(cargo, root, env, profiles)
    except BaseException:
        for edit in reversed(written):
            _restore(edit)
        raise
    if error is None:
        return edits
    for edit in reversed(written):
        _restore(edit)
    baseline = await _cargo_error(cargo, root, env, [])
    if baseline is not None:
        raise TuneRejected(
            "cargo rejects this project's configuration even without the "
            f"change, so it cannot be checked; nothing was changed: {baseline}"
        )
    raise TuneRejected(f"cargo rejects the tuned configuration; nothing was changed: {error}")


def revert(edit: FileEdit, force: bool = False) -> None:
    try:
        current: bytes | None = edit.path.read_bytes()
    except FileNotFoundError:
        current = None
    if current == edit.before:
        return
    if current != edit.after and not force:
        raise TuneConflict(
            f"{edit.path} was changed after the tuning was applied; reverting "
            "would discard that change (--force restores the version from "
            "before the tuning anyway)"
        )
    _restore(edit)
