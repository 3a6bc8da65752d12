"""A request's arguments checked against the wire schema, in one place.

`parse` is the only function that looks at what a client sent for an op's
arguments; the handlers receive its result, typed (rbd.contract.schema), with
every argument that has a default present. Whatever it lets through can reach
the OS and the store: so a path is one the OS can take (no NUL byte, encodable),
an integer fits SQLite's 64 bits, an environment is one a process can be given.
Keys the op does not take are ignored (editors may send more).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from typing import Any

from rbd.contract import protocol
from rbd.contract.schema import ARGS, Arg
from rbd.daemon.errors import BadRequest

# Integers the store can hold (SQLite's are 64-bit); a larger one is a bad argument,
# not an OverflowError deep in the store.
MIN_INT = -(1 << 63)
MAX_INT = (1 << 63) - 1

# What a value of each kind must be, as the error says it.
_MUST = {
    "str": "be str",
    "path": "be str",
    "abs_path": "be an absolute path",
    "int": "be int",
    "bool": "be bool",
    "str_list": "be a list of strings",
    "env": "map strings to strings",
    "object": "be dict",
}
_TYPES: dict[str, type] = {"str": str, "path": str, "int": int, "bool": bool, "object": dict}


def parse(op: str, message: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments of op (a key of schema.ARGS) in message, checked and completed
    with their defaults: a schema.REQUESTS[op], which is what op's handler is typed to
    take (schema.Request, the union of them all, would need narrowing at every use).

    Raises BadRequest for an argument that is missing, of the wrong type or out of
    range, with a message naming it.
    """
    request: dict[str, Any] = {}
    for name, arg in ARGS[op].items():
        value = message.get(name)
        if value is None:
            if arg.required:
                raise BadRequest(_missing(name, arg))
            if arg.default is None and name in message:
                request[name] = None
            elif arg.default is not None:
                if name in message:  # null where a default is no absence
                    raise BadRequest(_wrong(name, arg))
                # A copy: a handler may change what it was given.
                request[name] = copy.copy(arg.default)
            continue
        request[name] = _checked(name, arg, value)
    _check_op(op, request)
    return request


def _checked(name: str, arg: Arg, value: Any) -> Any:
    kind = arg.kind
    if kind == "abs_path":
        if not isinstance(value, str) or not value.startswith("/"):
            raise BadRequest(_wrong(name, arg))
        return _path(name, value)
    if kind == "str_list":
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise BadRequest(_wrong(name, arg))
        return value
    if kind == "env":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise BadRequest(_wrong(name, arg))
        for key, text in value.items():
            # What a process cannot be given (a ValueError deep in a spawn otherwise).
            if not key or "=" in key or "\0" in key or "\0" in text:
                raise BadRequest(
                    f"bad arguments: {name!r} has a variable no process can be given: {key!r}"
                )
        return value
    # JSON's true is not an integer, whatever Python's bool says.
    if not isinstance(value, _TYPES[kind]) or (isinstance(value, bool) and kind != "bool"):
        raise BadRequest(_wrong(name, arg))
    if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
        raise BadRequest(f"bad arguments: {name!r} is out of range")
    if isinstance(value, str) and kind == "path":
        return _path(name, value)
    return value


def _path(name: str, value: str) -> str:
    """value, if the OS can take it as a file name (pathlib raises ValueError otherwise)."""
    try:
        encoded = os.fsencode(value)
    except UnicodeEncodeError:
        raise BadRequest(f"bad arguments: {name!r} is not encodable as a file name") from None
    if b"\0" in encoded:
        raise BadRequest(f"bad arguments: {name!r} contains a NUL byte")
    return value


def _missing(name: str, arg: Arg) -> str:
    if arg.kind == "abs_path":
        return _wrong(name, arg)
    return f"bad arguments: {name!r} is required"


def _wrong(name: str, arg: Arg) -> str:
    return f"bad arguments: {name!r} must {_MUST[arg.kind]}"


def _check_op(op: str, request: dict[str, Any]) -> None:
    """What one argument's kind cannot say."""
    if op == protocol.HISTORY and request["limit"] < 1:
        raise BadRequest("bad arguments: 'limit' must be at least 1")
    if op == protocol.TUNE_APPLY and not request["ids"]:
        raise BadRequest("bad arguments: name at least one suggestion id (see `rbd suggest`)")
