"""Edits to a TOML file the user owns, with tomlkit: everything the edit does not change
stays as it was, byte for byte.

Every comment, blank line, key order and quoting style is kept: tomlkit edits the parsed
document in place; a new key goes below its table's last key, in the quoting style the
file already uses; a table that does not exist yet goes at the end as its own
`[section]`; an inline table stays inline and keeps its spacing; a table left empty by a
removal goes, unless a comment is all that is left of it. rustflags are added only where
rustc would not already read them (`-Cx`, `-C x` and `--codegen=x` are one flag).
Two tomlkit methods used here are private (no public insert or remove at a position):
pyproject pins tomlkit to the version they were tested on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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

from rbd.daemon.advice.tune.changes import Change, KeyPath, validate
from rbd.daemon.errors import ConfigError

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
        validate(change)
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
