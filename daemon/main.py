"""`python -m rbd.daemon` / `rbd daemon`: run the daemon in the foreground until told to stop."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import anyio
import structlog

from rbd.contract import paths
from rbd.contract.errors import RbdError
from rbd.daemon import logsetup, runtime
from rbd.daemon.errors import AlreadyRunning, DaemonError


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rbd daemon", description=__doc__)
    parser.add_argument(
        "--foreground",
        action="store_true",
        help="accepted for service managers; the daemon always runs in the foreground of "
        "its process (`rbd start` detaches it)",
    )
    parser.parse_args(argv)
    try:
        socket_path = paths.socket_path()
        lock_path = paths.lock_path()
        runtime.prepare_private_dir(paths.runtime_dir())
        lock_fd = runtime.acquire_lock(lock_path)
    except AlreadyRunning:
        print("rbd: a daemon is already running", file=sys.stderr)
        return 0
    except (DaemonError, RbdError, OSError) as exc:
        print(f"rbd daemon: {exc}", file=sys.stderr)
        return 1
    # Set once the socket path holds nothing but a socket of ours to come: only
    # then is removing it at exit ours to do (not another process's socket, nor
    # a directory someone left there).
    socket_is_ours = False
    logged = False
    try:
        runtime.clear_stale_socket(socket_path)
        socket_is_ours = True
        # Private, and existing files tightened: the store keeps every `rbd start`'s
        # environment (rbd.contract.private).
        logsetup.configure(paths.log_path())
        logged = True
        # Imported after the lock: a second daemon racing this one exits early and cheaply.
        from rbd.daemon import tunables
        from rbd.daemon.app import Daemon
        from rbd.daemon.store.sqlite import Store

        # Before the store: a bad RBD_* bound refuses to start the daemon (ConfigError).
        bounds = tunables.read()
        store = Store(Path(paths.store_path()))
        anyio.run(Daemon(store, bounds).main)
        return 0
    except (DaemonError, RbdError, OSError) as exc:
        print(f"rbd daemon: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        # A bug: its traceback goes to the log, where a report can quote it;
        # the terminal (or daemon-start.log) gets one line.
        where = ""
        if logged:
            structlog.get_logger().exception("daemon_crashed")
            where = f" (traceback in {paths.log_path()})"
        print(f"rbd daemon: crashed: {type(exc).__name__}: {exc}{where}", file=sys.stderr)
        return 1
    finally:
        # Socket first, lock last: whoever takes the lock next finds no socket to probe.
        for path in (socket_path, lock_path) if socket_is_ours else (lock_path,):
            with contextlib.suppress(OSError):
                os.unlink(path)
        os.close(lock_fd)
