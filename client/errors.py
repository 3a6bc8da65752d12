"""The exceptions rbd's client raises, and the exit code each one maps to.

    RbdError                 base (rbd.contract.errors); exit code 1 (the thing asked for failed)
    ├── UsageError           bad command line or arguments; exit code 2
    ├── RequestFailed        the daemon answered `ok: false`; carries the error code
    ├── ProtocolError        a message that is not valid protocol (rbd.contract.errors)
    └── DaemonUnreachable    no daemon answers on the socket; exit code 3
        └── ProtocolMismatch the daemon speaks another protocol version

The CLI catches RbdError at its boundary and prints one line; nothing else
should escape it.
"""

from __future__ import annotations

from rbd.contract.errors import ProtocolError, RbdError

__all__ = [
    "DaemonUnreachable",
    "ProtocolError",
    "ProtocolMismatch",
    "RbdError",
    "RequestFailed",
    "UsageError",
]


class UsageError(RbdError):
    exit_code = 2


class RequestFailed(RbdError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class DaemonUnreachable(RbdError):
    exit_code = 3


class ProtocolMismatch(DaemonUnreachable):
    def __init__(self, message: str, daemon_pid: int | None = None) -> None:
        super().__init__(message)
        # The other-version daemon's pid (from the socket's peer credentials),
        # so that `rbd shutdown` can stop it without speaking its protocol.
        self.daemon_pid = daemon_pid
