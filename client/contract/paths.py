"""Where rbd keeps its socket, lock, store and log (shared by client and daemon).

The socket lives in a private directory under the user's runtime dir, the
store and log under the state dir; XDG_RUNTIME_DIR and XDG_STATE_HOME move
them. platformdirs decides, except on the client's hot path: `import
platformdirs` costs about 12 ms (a tenth of the client's budget), so when
XDG_RUNTIME_DIR is set on Linux the runtime dir is computed the way
platformdirs computes it (a test keeps the two in step).
"""

from __future__ import annotations

import os
import sys

APP = "rbd"


def _platformdirs_runtime() -> str:
    import warnings

    import platformdirs

    from rbd.contract.errors import RbdError

    with warnings.catch_warnings():
        # platformdirs warns when it falls back to /tmp/runtime-UID; rbd checks
        # that directory's ownership and mode itself.
        warnings.simplefilter("ignore")
        try:
            return platformdirs.user_runtime_dir(APP)
        except PermissionError as exc:
            # platformdirs refuses a /tmp/runtime-UID that another user created
            # first (or a symlink there): a socket in it would be theirs to
            # replace. rbd refuses too, in one line rather than a traceback; not
            # as DaemonUnreachable, which would have `rbd start` spawn a daemon
            # that fails the same way.
            raise RbdError(f"{exc} (rbd will not use it for its socket)") from None


def runtime_dir() -> str:
    xdg = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    if sys.platform == "linux" and xdg:
        return os.path.join(xdg, APP)
    return _platformdirs_runtime()


def state_dir() -> str:
    import platformdirs

    return platformdirs.user_state_dir(APP)


def cache_dir() -> str:
    """Where the daemon keeps what it can rebuild (its compiled rustc wrapper)."""
    import platformdirs

    return platformdirs.user_cache_dir(APP)


def socket_path() -> str:
    return os.path.join(runtime_dir(), "rbd.sock")


def lock_path() -> str:
    return os.path.join(runtime_dir(), "rbd.lock")


def log_path() -> str:
    return os.path.join(state_dir(), "rbd.log")


def store_path() -> str:
    return os.path.join(state_dir(), "rbd.sqlite3")


def spawn_log_path() -> str:
    """Where a daemon started by the client writes what it says before its log is set up."""
    return os.path.join(state_dir(), "daemon-start.log")
