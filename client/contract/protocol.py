"""The wire contract between rbd's client and daemon (the only module both import).

Transport: a Unix stream socket; one UTF-8 JSON object per line, each way.

- The first request on a connection must be `{"op": "hello", "protocol": N}`.
- Requests: `{"op": NAME, "id": ANY, ...arguments}`.
- Replies: `{"id": ID, "ok": true, ...results}` or
  `{"id": ID, "ok": false, "error": {"code": CODE, "message": TEXT}}`.
- Events (after `subscribe`): `{"event": NAME, "project": ROOT, "build_id": N, ...}`;
  they may interleave with replies.

A request line longer than MAX_REQUEST_BYTES gets a `too_large` error and the
connection closed. Result keys never collide with `id`, `ok`, `error`, `event`.

Each op's arguments, and the shapes of the replies and events, are typed in
rbd.contract.schema (which the client does not import at run time).
"""

from __future__ import annotations

import json

from rbd.contract.errors import ProtocolError

# `import typing` costs ~2 ms of the client's start; mypy honours this name all the same.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Final

PROTOCOL_VERSION = 1

MAX_REQUEST_BYTES = 1 << 20
# Replies can carry a build's rendered diagnostics, which the daemon caps well below this.
MAX_REPLY_BYTES = 64 << 20

# Requests.
HELLO = "hello"
STATUS = "status"
START = "start"
STOP = "stop"
SHUTDOWN = "shutdown"
HISTORY = "history"
SHOW = "show"
SUBSCRIBE = "subscribe"
SUGGEST = "suggest"
TUNE_APPLY = "tune_apply"
TUNE_REVERT = "tune_revert"
BENCH = "bench"
BENCH_CANCEL = "bench_cancel"
# `rbd build`: build a watched project now, as a save would; answered when that build ends.
BUILD = "build"
# `rbd logs --app`: the last lines of a watched project's app output.
APP_LOG = "app_log"
OPS = frozenset(
    {HELLO, STATUS, START, STOP, SHUTDOWN, HISTORY, SHOW, SUBSCRIBE, BUILD, APP_LOG}
    | {SUGGEST, TUNE_APPLY, TUNE_REVERT, BENCH, BENCH_CANCEL}
)

# Events. Final: a type checker reads each as its literal (rbd.contract.schema's Literals).
BUILD_STARTED: Final = "build_started"
BUILD_PROGRESS: Final = "build_progress"
UNIT_FINISHED: Final = "unit_finished"
BUILD_FINISHED: Final = "build_finished"
PROJECT_STATE: Final = "project_state"
# `rbd bench` as a daemon job: started, one per build (counted or warm-up), finished
# (with the report, or "cancelled" / "error").
BENCH_STARTED: Final = "bench_started"
BENCH_PROGRESS: Final = "bench_progress"
BENCH_FINISHED: Final = "bench_finished"
# Run mode: an instance of the app started, answered (ready), failed to, exited; its output.
APP_STARTED: Final = "app_started"
APP_READY: Final = "app_ready"
APP_FAILED: Final = "app_failed"
APP_EXITED: Final = "app_exited"
APP_OUTPUT: Final = "app_output"

# Error codes.
BAD_REQUEST: Final = "bad_request"
UNKNOWN_OP: Final = "unknown_op"
HELLO_REQUIRED: Final = "hello_required"
PROTOCOL_MISMATCH: Final = "protocol_mismatch"
TOO_LARGE: Final = "too_large"
FORBIDDEN: Final = "forbidden"
NOT_FOUND: Final = "not_found"
NOT_WATCHED: Final = "not_watched"
NO_PROJECT: Final = "no_project"
CARGO_MISSING: Final = "cargo_missing"
BAD_CONFIG: Final = "bad_config"
# A file rbd tuned was edited since: reverting would lose those edits.
CONFLICT: Final = "conflict"
# A build configuration this machine cannot build (cranelift without nightly...).
UNAVAILABLE: Final = "unavailable"
# One bench at a time: two would measure each other.
BUSY: Final = "busy"
CANCELLED: Final = "cancelled"
# The daemon's SQLite store failed (disk full, I/O error): builds go on, `rbd status` says why.
STORE_ERROR: Final = "store_error"
# A bug in the daemon: logged with its traceback.
INTERNAL: Final = "internal"

# Build outcomes and project states.
OUTCOMES = ("success", "failure", "cancelled", "interrupted", "timeout")
# What a build rebuilt (see rbd.daemon.build.kinds): only workspace members (edit),
# dependencies too (deps), everything (full), nothing (noop).
BUILD_KINDS = ("edit", "deps", "full", "noop")
STATES = ("idle", "settling", "waiting", "building", "paused", "gone")

# The phase keys of a build summary, in display order. A phase rbd could not
# measure is null, never estimated.
PHASE_KEYS = (
    "overhead_s",
    "queue_s",
    "compile_s",
    "frontend_s",
    "codegen_s",
    "link_s",
    "build_script_s",
    "lock_wait_s",
    "other_s",
)

if TYPE_CHECKING:
    Message = dict[str, Any]


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def decode(line: bytes) -> Message:
    """Parse one line; anything but a JSON object raises ProtocolError."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"expected a JSON object, got {type(message).__name__}")
    return message


def ok(request_id: Any, **results: Any) -> Message:
    return {"id": request_id, "ok": True, **results}


def error(request_id: Any, code: str, message: str) -> Message:
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


def mismatch_message(daemon: Any, client: Any = PROTOCOL_VERSION) -> str:
    return (
        f"the running daemon speaks protocol {daemon} but this client speaks {client}: "
        "restart the daemon with `rbd shutdown && rbd start`"
    )
