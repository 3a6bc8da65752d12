"""rbd's own directories and files, private to the user who runs it (0700 / 0600).

The store keeps the environment of every `rbd start`, API tokens included (a
project resumed after a restart builds with the environment it was started
with), and the log names every project and file: neither is anyone else's to
read. Modes are given where rbd creates its files, and existing ones are
tightened on start, rather than set by a process umask: the daemon also
writes into the user's projects (tune's config files take the user's umask,
rbd.daemon.advice.tune.files) and spawns cargo, whose outputs must keep it
too, and a umask changed around one creation would apply to every thread of
the process meanwhile. SQLite gives a store's -wal and -shm the mode of the
store file itself, so a store created 0600 keeps its journal private.

Every failure is an RbdError of one line that names the path at fault: a file
or a dangling symlink where a directory should be, a directory rbd may not
write, a directory of another uid.
"""

from __future__ import annotations

import os
import stat

from rbd.contract.errors import RbdError

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600


def directory(path: str, what: str, *, contents: bool = False) -> str:
    """Create path 0700, or make an existing one of ours exactly 0700; with contents,
    every file and directory directly in it of ours 0600 / 0700 too (symlinks are
    left alone). Returns path.

    Raises RbdError if path cannot be made, is not a directory, belongs to another
    uid (whoever owns it could read what rbd keeps there), or cannot be tightened.
    """
    try:
        os.makedirs(path, mode=DIR_MODE, exist_ok=True)
        info = os.stat(path)
    except OSError as exc:
        raise RbdError(f"cannot use {path} as {what}: {why(path, exc)}") from None
    if info.st_uid != os.getuid():
        raise RbdError(
            f"{path} ({what}) belongs to uid {info.st_uid}, not to you (uid {os.getuid()}): "
            "refusing to keep rbd's files there; have its owner (or root) remove it"
        )
    try:
        if stat.S_IMODE(info.st_mode) != DIR_MODE:
            os.chmod(path, DIR_MODE)
        if contents:
            _tighten_entries(path)
    except OSError as exc:
        raise RbdError(f"cannot make {what} private: {why(exc.filename or path, exc)}") from None
    return path


def _tighten_entries(path: str) -> None:
    uid = os.getuid()
    with os.scandir(path) as entries:
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            if info.st_uid != uid:
                continue
            if stat.S_ISDIR(info.st_mode):
                wanted = DIR_MODE
            elif stat.S_ISREG(info.st_mode):
                wanted = FILE_MODE
            else:
                continue
            if stat.S_IMODE(info.st_mode) != wanted:
                os.chmod(entry.path, wanted)


def file(path: str, *, create: bool = True) -> None:
    """Make the file at path (created if missing and create) exactly 0600 if it is ours:
    a store the user once made read-only, or whose -shm SQLite created read-only
    from it, becomes writable again.

    Raises RbdError if it cannot be created or changed.
    """
    try:
        if create:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, FILE_MODE))
        info = os.stat(path)
    except FileNotFoundError as exc:
        if not create:
            return
        raise RbdError(f"cannot create {path}: {why(path, exc)}") from None
    except OSError as exc:
        raise RbdError(f"cannot create {path}: {why(path, exc)}") from None
    try:
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != FILE_MODE:
            os.chmod(path, FILE_MODE)
    except OSError as exc:
        raise RbdError(f"cannot make {path} private: {why(path, exc)}") from None


def open_append(path: str) -> BinaryIO:
    """path opened to append, unbuffered, created 0600 (an existing file of ours is made 0600).

    Raises RbdError if it cannot be opened.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise RbdError(f"cannot open {path}: {why(path, exc)}") from None
    try:
        info = os.fstat(fd)
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
    except OSError as exc:
        os.close(fd)
        raise RbdError(f"cannot make {path} private: {why(path, exc)}") from None
    return open(fd, "ab", buffering=0)


def why(path: str, exc: OSError) -> str:
    """What is wrong on the way to path, named by the first component at fault
    (errno alone says "File exists" for a file where a directory should be)."""
    path = os.path.abspath(path)
    existing = path
    while not os.path.lexists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    if os.path.islink(existing) and not os.path.exists(existing):
        return f"{existing} is a symlink to {os.readlink(existing)}, which does not exist"
    if os.path.exists(existing) and not os.path.isdir(existing) and existing != path:
        return f"{existing} is not a directory"
    if existing == path and isinstance(exc, (FileExistsError, NotADirectoryError)):
        return f"{path} is not a directory"
    reason = exc.strerror or str(exc) or type(exc).__name__
    named = exc.filename and os.path.abspath(os.fsdecode(exc.filename)) != path
    return f"{reason} ({exc.filename})" if named else reason
