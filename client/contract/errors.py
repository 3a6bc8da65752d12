"""The errors both sides of the contract raise.

    RbdError         base of every error rbd reports to a user; exit code 1
    └── ProtocolError a message that is not valid protocol (either side)

The client's tree (rbd.client.errors) grows from RbdError; the daemon's
(rbd.daemon.errors) is its own, since each of its errors carries the wire
error code it is answered with.
"""

from __future__ import annotations


class RbdError(Exception):
    exit_code = 1


class ProtocolError(RbdError):
    pass
