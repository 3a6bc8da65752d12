"""The bench's own copy of a workspace, and the edits its incremental runs make.

`rbd bench` never builds the user's tree: it copies the workspace's sources under
`<target dir>/rbd/bench/src` (build output to the watcher, git and `cargo clean`
alike) and edits only that copy. Path dependencies outside the workspace are used in
place: their relative paths in the copied manifests become absolute.

The copy is made with fresh mtimes. cargo decides freshness by mtime, and a copy
keeping the originals' mtimes would look older than what a previous bench built from
its own edits, so cargo could take an edited crate's artifacts for fresh.

The copy keeps the project's symlinks as links (a link to a large or shared tree is
not duplicated). So every file the bench writes in it — the edited source, a copied
manifest — is first made the copy's own (`own_file`): each link on its way is
replaced by a copy of what it points to, and the write itself does not follow a
link. Writing through a link would edit the user's real file.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit
import tomlkit.exceptions

from rbd.daemon.errors import ConfigError

# Version control and other tools' state: never part of a build.
SKIP_NAMES = frozenset({".git", ".hg", ".svn", ".jj", ".idea", ".vscode", "node_modules"})
DEP_TABLES = ("dependencies", "dev-dependencies", "build-dependencies")
# A string literal given to one of these is a path, a variable name or part of a
# larger literal: changing it would break or change the build rather than edit code.
LITERAL_MACROS = frozenset(
    {"include_str", "include_bytes", "include", "env", "option_env", "concat", "asm"}
)
MARK = "rbd bench"


def copy_workspace(root: Path, target_dir: Path, copy: Path) -> int:
    """Replace copy with root's sources; returns the number of files copied.

    Skipped: VCS and editor dirs, and cargo target dirs (the given one, and any dir
    holding cargo's CACHEDIR.TAG). `.cargo/` is copied only when the copy is outside
    root: inside, cargo finds root's own config files above the copy anyway.
    """
    skip = {target_dir.resolve(), copy.resolve()}
    inside = copy.resolve().is_relative_to(root.resolve())

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        out = {n for n in names if n in SKIP_NAMES}
        if inside and here == root:
            out.add(".cargo")
        for name in names:
            path = here / name
            if path.is_dir() and (path.resolve() in skip or (path / "CACHEDIR.TAG").exists()):
                out.add(name)
        return out

    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(root, copy, ignore=ignore, copy_function=shutil.copyfile, symlinks=True)
    files = 0
    for directory, _dirs, names in os.walk(copy):
        files += len(names)
        if "Cargo.toml" in names:
            manifest = Path(directory) / "Cargo.toml"
            _absolute_outside_paths(manifest, (root / manifest.relative_to(copy)).parent, root)
    return files


def _absolute_outside_paths(manifest: Path, original_dir: Path, root: Path) -> int:
    """Point the copied manifest's path dependencies outside root at their real place."""
    try:
        doc = tomlkit.parse(manifest.read_text())
    except (OSError, UnicodeDecodeError, tomlkit.exceptions.ParseError):
        return 0  # cargo reports a broken manifest better than rbd could
    changed = 0
    for table in _dependency_tables(doc):
        for dep in table.values():
            if not isinstance(dep, dict) or not isinstance(dep.get("path"), str):
                continue
            target = (original_dir / dep["path"]).resolve()
            if not target.is_relative_to(root.resolve()):
                dep["path"] = str(target)
                changed += 1
    if changed:
        write_own(manifest, tomlkit.dumps(doc))
    return changed


def own_file(copy: Path, relative: Path) -> Path:
    """copy / relative, with every symlink on its way (the file's own included) replaced
    by a copy of what it points to: a write there then lands in the bench's copy, never in
    the file a link leads to. relative must not leave copy (no `..`)."""
    path = copy
    for part in relative.parts:
        path = path / part
        if not path.is_symlink():
            continue
        target = path.resolve(strict=True)
        path.unlink()
        if target.is_dir():
            shutil.copytree(target, path, symlinks=True, copy_function=shutil.copyfile)
        else:
            shutil.copyfile(target, path)
    return path


def write_own(path: Path, text: str) -> None:
    """Write text to path, replacing a symlink there rather than writing through it."""
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _dependency_tables(doc: Any) -> list[dict[str, Any]]:
    tables: list[Any] = [doc.get(name) for name in DEP_TABLES]
    for platform in (doc.get("target") or {}).values():
        if isinstance(platform, dict):
            tables += [platform.get(name) for name in DEP_TABLES]
    workspace = doc.get("workspace")
    if isinstance(workspace, dict):
        tables.append(workspace.get("dependencies"))
    tables += list((doc.get("patch") or {}).values())
    tables.append(doc.get("replace"))
    return [t for t in tables if isinstance(t, dict)]


def edit_target(
    root: Path, package_dirs: list[Path], triggers: list[list[str]], asked: str | None
) -> Path:
    """The file the incremental runs edit, relative to root: asked (--edit), else the .rs
    file most often in the project's recorded build triggers, else a bin's main.rs, else a
    lib.rs."""
    if asked is not None:
        path = Path(asked)
        full = (path if path.is_absolute() else root / path).resolve()
        if not full.is_relative_to(root.resolve()):
            raise ConfigError(f"--edit {asked}: not inside the project {root}")
        if full.suffix != ".rs" or not full.is_file():
            raise ConfigError(f"--edit {asked}: not a Rust source file")
        return full.relative_to(root.resolve())
    counts = Counter(p for trigger in triggers for p in trigger if p.endswith(".rs"))
    for edited, _count in counts.most_common():
        if (root / edited).is_file():
            return Path(edited)
    for name in ("main.rs", "lib.rs"):
        for package in [root, *package_dirs]:
            candidate = package / "src" / name
            if candidate.is_file() and candidate.resolve().is_relative_to(root.resolve()):
                return candidate.resolve().relative_to(root.resolve())
    raise ConfigError(f"no Rust source to edit in {root}: name one with --edit FILE")


@dataclass(frozen=True)
class Edit:
    """How one file is edited: where, and whether inside a string literal or a comment."""

    kind: str  # "string" | "comment" | "appended comment"
    at: int  # offset of the insertion in the original text

    def apply(self, text: str, n: int) -> str:
        """text with the n-th edit (each n gives a different, same-length change)."""
        if self.kind == "appended comment":
            end = "" if text.endswith("\n") or not text else "\n"
            return f"{text}{end}// {MARK} {n:06d}\n"
        return f"{text[: self.at]} [{MARK} {n:06d}]{text[self.at :]}"


def plan_edit(text: str, comment_only: bool = False) -> Edit:
    """Where to edit: the end of a string literal's content (code that really
    recompiles), else the end of a line comment, else a comment appended."""
    strings, comments = _scan(text)
    if not comment_only and strings:
        inner = [at for at, depth in strings if depth > 0]
        return Edit("string", (inner or [strings[0][0]])[0])
    if comments:
        return Edit("comment", comments[0])
    return Edit("appended comment", len(text))


def _scan(text: str) -> tuple[list[tuple[int, int]], list[int]]:
    """A small Rust lexer: the closing-quote offsets (with brace depth) of the plain string
    literals that are safe to edit, and the end offsets of line comments."""
    strings: list[tuple[int, int]] = []
    comments: list[int] = []
    i, n, depth = 0, len(text), 0
    attribute_depth = 0  # bracket depth inside #[...] / #![...]
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            comments.append(len(text[:end].rstrip()))
            i = end
        elif text.startswith("/*", i):
            i = _block_comment_end(text, i)
        elif c in "rbc" and not _ident_char(text, i - 1) and _raw_string_at(text, i):
            i = _raw_string_end(text, i)
        elif c == '"':
            end = _string_end(text, i)
            prefixed = i > 0 and text[i - 1] in "bc" and not _ident_char(text, i - 2)
            if attribute_depth == 0 and not prefixed and end <= n and _safe_literal(text, i):
                strings.append((end - 1, depth))
            i = end
        elif c == "'":
            i = _char_or_lifetime_end(text, i)
        elif c == "#" and _attribute_at(text, i):
            attribute_depth = 1
            i = text.index("[", i) + 1
        elif c in "[]" and attribute_depth:
            attribute_depth += 1 if c == "[" else -1
            i += 1
        else:
            depth += {"{": 1, "}": -1}.get(c, 0)
            i += 1
    return strings, comments


def _ident_char(text: str, i: int) -> bool:
    return i >= 0 and (text[i].isalnum() or text[i] == "_")


def _attribute_at(text: str, i: int) -> bool:
    rest = text[i + 1 : i + 3]
    return rest.startswith("[") or rest == "!["


def _raw_string_at(text: str, i: int) -> bool:
    j = i + 1 if text[i] == "r" else i + 2 if text[i + 1 : i + 2] == "r" else -1
    if j < 0:
        return False
    while j < len(text) and text[j] == "#":
        j += 1
    return j < len(text) and text[j] == '"'


def _raw_string_end(text: str, i: int) -> int:
    start = text.index('"', i)
    closing = '"' + "#" * (start - text.index("r", i) - 1)
    end = text.find(closing, start + 1)
    return len(text) if end < 0 else end + len(closing)


def _string_end(text: str, i: int) -> int:
    j = i + 1
    while j < len(text):
        if text[j] == "\\":
            j += 2
        elif text[j] == '"':
            return j + 1
        else:
            j += 1
    return len(text) + 1


def _block_comment_end(text: str, i: int) -> int:
    level, j = 0, i
    while j < len(text):
        if text.startswith("/*", j):
            level, j = level + 1, j + 2
        elif text.startswith("*/", j):
            level, j = level - 1, j + 2
            if level == 0:
                return j
        else:
            j += 1
    return len(text)


def _char_or_lifetime_end(text: str, i: int) -> int:
    if text[i + 1 : i + 2] == "\\":
        end = text.find("'", i + 3)
        return len(text) if end < 0 else end + 1
    if text[i + 2 : i + 3] == "'":
        return i + 3
    return i + 1  # a lifetime or a label


def _safe_literal(text: str, i: int) -> bool:
    """Not the argument of a path-taking macro, nor an ABI name (extern "C")."""
    before = text[:i].rstrip()
    if before.endswith("extern"):
        return False
    if before.endswith("("):
        head = before[:-1].rstrip()
        if head.endswith("!"):
            name = head[:-1].rstrip()
            start = len(name)
            while start > 0 and _ident_char(name, start - 1):
                start -= 1
            return name[start:] not in LITERAL_MACROS
    return True
