"""The files a tuning change edits: planned as exact bytes before and after, written
atomically, and restored byte for byte.

A write goes to a temporary file beside the target, fsynced, then renamed over it: a
crash or a full disk leaves the old content or the new, never part of either. A file
that is a symlink (or lies under a linked directory) is written where the link leads,
and the link stays a link, but only where that is inside the project: a tune never
writes outside the project it was asked for, and its diff names the file it writes. The bytes
from before each edit are kept (the store keeps them with the tune), so a revert restores
them exactly, and refuses, unless forced, to overwrite a file changed since.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from rbd.daemon.advice.tune.changes import Change, validate
from rbd.daemon.advice.tune.tomledit import edit_text
from rbd.daemon.errors import ConfigError, TuneConflict


@dataclass(frozen=True)
class FileEdit:
    path: Path
    before: bytes | None
    after: bytes
    diff: str


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
        validate(change)
        groups.setdefault(change.file, []).append(change)
    edits = []
    for file, group in groups.items():
        if file == ".cargo/config.toml" and (root / ".cargo" / "config").is_file():
            raise ConfigError(
                "this project has the older .cargo/config, which cargo reads "
                "instead of .cargo/config.toml: rename it to config.toml first"
            )
        path = root / file
        shown = _inside(root, file)
        before = path.read_bytes() if path.exists() else None
        try:
            text = (before or b"").decode()
            after = edit_text(text, group)
        except (UnicodeDecodeError, ConfigError) as exc:
            raise ConfigError(f"{file}: {exc}") from exc
        if after.encode() != (before or b""):
            edits.append(FileEdit(path, before, after.encode(), _diff(shown, text, after)))
    return edits


def _inside(root: Path, file: str) -> str:
    """How the diff names file: as it is, or, where links lead elsewhere in the project,
    `FILE -> WHERE IT LEADS`. Raises ConfigError where they lead outside the project."""
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(root / file))
    if not real.is_relative_to(real_root):
        raise ConfigError(
            f"{file} is a link to {real}, outside the project: rbd tune writes only inside "
            f"{root}; make the change in {real} by hand (`rbd suggest` shows it) or replace "
            "the link with a file"
        )
    if real == real_root / file:
        return file
    return f"{file} -> {real.relative_to(real_root)}"


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


def restore(edit: FileEdit) -> None:
    if edit.before is not None:
        write_atomic(edit.path, edit.before)
        return
    with contextlib.suppress(FileNotFoundError):
        edit.path.unlink()
    if edit.path.parent.name == ".cargo":
        with contextlib.suppress(OSError):  # not empty: it holds more than our file
            edit.path.parent.rmdir()


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
    restore(edit)
