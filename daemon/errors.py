"""The daemon's exceptions. Each carries the protocol error code the server replies with.

    DaemonError             base; code `internal`
    ├── BadRequest          a request's arguments are malformed; code `bad_request`
    ├── AlreadyRunning      another daemon holds the lock (exit quietly)
    ├── UnsafeRuntimeDir    the socket directory is not ours or not private
    ├── ProjectError        the path is not a usable Cargo project; code `no_project`
    │   └── CargoMissing    cargo is not on the PATH the build would use; code `cargo_missing`
    ├── NotWatched          the path is not a watched project; code `not_watched`
    ├── NotFound            no such build; code `not_found`
    ├── ConfigError         an rbd setting is invalid; code `bad_config`
    │   └── TuneRejected    a tuning change cargo does not accept (rolled back)
    ├── TuneConflict        a tuned file changed since; code `conflict`
    ├── Unavailable         a build configuration this machine lacks; code `unavailable`
    ├── Busy                a bench is running already; code `busy`
    ├── BenchCancelled      the bench was cancelled before it finished; code `cancelled`
    └── StoreError          the SQLite store failed; builds go on, status reports it;
                            code `store_error`

The server answers a DaemonError with its code. Anything else reaching its boundary
is a bug in the daemon: logged with its traceback and answered as `internal` (never
`bad_request`, which would blame the client).
"""

from __future__ import annotations

from rbd.contract import protocol
from rbd.contract.schema import ErrorCode


class DaemonError(Exception):
    code: ErrorCode = protocol.INTERNAL


class BadRequest(DaemonError):
    """What the client sent is not a valid request (rbd.daemon.rpc.requests)."""

    code: ErrorCode = protocol.BAD_REQUEST


class AlreadyRunning(DaemonError):
    pass


class UnsafeRuntimeDir(DaemonError):
    pass


class ProjectError(DaemonError):
    code: ErrorCode = protocol.NO_PROJECT


class CargoMissing(ProjectError):
    code: ErrorCode = protocol.CARGO_MISSING


class NotWatched(DaemonError):
    code: ErrorCode = protocol.NOT_WATCHED


class NotFound(DaemonError):
    code: ErrorCode = protocol.NOT_FOUND


class ConfigError(DaemonError):
    code: ErrorCode = protocol.BAD_CONFIG


class TuneRejected(ConfigError):
    pass


class TuneConflict(DaemonError):
    code: ErrorCode = protocol.CONFLICT


class Unavailable(DaemonError):
    code: ErrorCode = protocol.UNAVAILABLE


class Busy(DaemonError):
    code: ErrorCode = protocol.BUSY


class BenchCancelled(DaemonError):
    code: ErrorCode = protocol.CANCELLED


class StoreError(DaemonError):
    code: ErrorCode = protocol.STORE_ERROR
