"""Who is at the other end of a Unix socket: both sides refuse a peer of another uid.

The daemon refuses a client of another user (it would run builds with that
client's environment); the client refuses a socket served by another user's
process (it would hand that process its whole environment with `rbd start`).
"""

from __future__ import annotations

# The C module: the client imports this on its start, where socket.py alone costs 2 ms;
# socket.socket, the daemon's, subclasses _socket.socket.
import _socket
import sys


def peer_credentials(sock: _socket.socket) -> tuple[int | None, int] | None:
    """(pid, uid) of the process at the other end, None where the system cannot say.

    Linux gives both (SO_PEERCRED); macOS gives the uid only (LOCAL_PEERCRED),
    so pid is None there.
    """
    try:
        if hasattr(_socket, "SO_PEERCRED"):
            # struct ucred: pid_t pid; uid_t uid; gid_t gid, native order (read with
            # int.from_bytes, not struct: one import fewer on the client's start).
            creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
            pid = int.from_bytes(creds[0:4], sys.byteorder, signed=True)
            return pid, int.from_bytes(creds[4:8], sys.byteorder)
        if sys.platform == "darwin":
            # struct xucred: u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]
            sol_local, local_peercred = 0, 0x001
            creds = sock.getsockopt(sol_local, local_peercred, 4 + 4 + 2 + 2 + 16 * 4)
            return None, int.from_bytes(creds[4:8], sys.byteorder)
    except OSError:
        return None
    return None
