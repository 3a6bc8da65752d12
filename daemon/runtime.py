"""The daemon's runtime directory discipline (watchman's): a private directory,
a lock taken before the socket is bound, stale sockets probed before removal
(the peer's uid is checked on every connection: rbd.contract.peer).
"""

from __future__ import annotations

import fcntl
import os
import socket
import stat

from rbd.contract import private
from rbd.daemon.errors import AlreadyRunning, UnsafeRuntimeDir


def prepare_private_dir(path: str) -> None:
    """Create path 0700, or check that an existing one is ours and private.

    Raises UnsafeRuntimeDir (one line) if it cannot be made or is not ours and private.
    """
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        info = os.lstat(path)
    except OSError as exc:
        raise UnsafeRuntimeDir(
            f"cannot use {path} for rbd's socket: {private.why(path, exc)}"
        ) from None
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeRuntimeDir(f"{path} is not a directory (a symlink?); remove it and retry")
    if info.st_uid != os.getuid():
        # Whoever owns it could replace rbd's socket with their own, or read
        # what clients send it (their whole environment, with `rbd start`).
        raise UnsafeRuntimeDir(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}): "
            "refusing to put rbd's socket there; have its owner (or root) remove it, "
            "or set XDG_RUNTIME_DIR to a directory of your own with mode 700"
        )
    if info.st_mode & 0o077:
        raise UnsafeRuntimeDir(
            f"{path} is accessible to other users (mode {stat.S_IMODE(info.st_mode):o}): "
            f"refusing to put rbd's socket there; fix it with `chmod 700 {path}`"
        )


def acquire_lock(path: str) -> int:
    """Take the single-instance lock; the returned fd holds it until the process ends."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning("another rbd daemon holds the lock") from None
        # The previous holder may have unlinked the file between our open and
        # our lock: then we hold a lock nobody else can see. Try again.
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def answers(path: str, timeout_s: float = 1.0) -> bool:
    """Whether something accepts connections on the socket at path."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(timeout_s)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def clear_stale_socket(path: str) -> bool:
    """Remove a socket nobody answers on; True if one was removed.

    Raises AlreadyRunning if something answers on it, UnsafeRuntimeDir if
    something other than a socket is there (rbd removes only its own kind).
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a socket"
        raise UnsafeRuntimeDir(
            f"{path} is {kind}, where rbd's socket goes: rbd will not remove it; "
            "remove it yourself and retry"
        )
    if answers(path):
        raise AlreadyRunning(f"a process is serving {path} without holding the lock")
    os.unlink(path)
    return True
