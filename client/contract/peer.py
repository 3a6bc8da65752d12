"""Who is at the other end of a Unix socket: both sides refuse a peer of another uid.

The daemon refuses a client of another user (it would run builds with that
client's environment); the client refuses a socket served by another user's
process (it would hand that process its whole environment with `rbd start`).
"""

from __future__ import annotations

import socket
import struct
import sys


def peer_credentials(sock: socket.socket) -> tuple[int | None, int] | None:
    """(pid, uid) of the process at the other end, None where the system cannot say.

    Linux gives both (SO_PEERCRED); macOS gives the uid only (LOCAL_PEERCRED),
    so pid is None there.
    """
    try:
        if hasattr(socket, "SO_PEERCRED"):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            return int(pid), int(uid)
        if sys.platform == "darwin":
            # struct xucred: u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]
            sol_local, local_peercred = 0, 0x001
            creds = sock.getsockopt(sol_local, local_peercred, 4 + 4 + 2 + 2 + 16 * 4)
            return None, int(struct.unpack_from("I", creds, 4)[0])
    except OSError:
        return None
    return None
