"""The wire schema (rbd.contract.schema) against what uses it: the daemon's handlers and
validator, its TypedDicts, README's op table and error codes; and the validator's checks."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest

from rbd.contract import protocol, schema
from rbd.daemon.bench import runner
from rbd.daemon.errors import BadRequest
from rbd.daemon.rpc import handlers, requests

README = Path(__file__).resolve().parent.parent / "README.md"

# The annotation each kind of argument has in its request's TypedDict.
ANNOTATIONS: dict[str, Any] = {
    "str": str,
    "path": str,
    "abs_path": str,
    "int": int,
    "bool": bool,
    "str_list": list[str],
    "env": dict[str, str],
    "object": dict[str, Any],
}


def readme_ops() -> dict[str, dict[str, bool]]:
    """README's op table: each op's documented arguments, and whether each is optional
    (marked `?`)."""
    section = README.read_text().split("## Wire protocol", 1)[1].split("\n## ", 1)[0]
    ops: dict[str, dict[str, bool]] = {}
    for line in section.splitlines():
        match = re.match(r"\| `(\w+)` \| (.*?) \| .* \|$", line)
        if match is None:
            continue
        arguments = match[2]
        # Explanations and defaults in parentheses (which may quote JSON) are not arguments.
        while (shorter := re.sub(r"\([^()]*\)", "", arguments)) != arguments:
            arguments = shorter
        ops[match[1]] = {name: bool(mark) for name, mark in re.findall(r"`(\w+)`(\?)?", arguments)}
    return ops


def test_every_op_has_a_schema_a_request_type_and_a_handler() -> None:
    assert set(schema.ARGS) == protocol.OPS
    assert set(schema.REQUESTS) == protocol.OPS
    # `hello` is answered by the server itself.
    assert set(handlers.HANDLERS) | {protocol.HELLO} == protocol.OPS
    assert protocol.HELLO not in handlers.HANDLERS


@pytest.mark.parametrize("op", sorted(protocol.OPS))
def test_the_table_and_the_typeddict_agree(op: str) -> None:
    request = schema.REQUESTS[op]
    args = schema.ARGS[op]
    assert set(get_type_hints(request)) == set(args)
    assert request.__required_keys__ == {n for n, a in args.items() if a.required}  # type: ignore[attr-defined]
    for name, annotation in get_type_hints(request).items():
        arg = args[name]
        expected = ANNOTATIONS[arg.kind]
        if not arg.required and arg.default is None:
            # Absent or null: the handler gets None (or no key).
            assert get_origin(annotation) in (types.UnionType, typing.Union), (op, name)
            assert set(get_args(annotation)) == {expected, type(None)}, (op, name)
        else:
            assert annotation == expected, (op, name, annotation)
        if arg.required:
            assert arg.default is None, (op, name)


def test_phases_outcomes_and_states_are_the_protocols() -> None:
    assert tuple(schema.Phases.__annotations__) == protocol.PHASE_KEYS
    assert get_args(schema.Outcome) == protocol.OUTCOMES
    assert get_args(schema.State) == protocol.STATES


def test_readme_documents_every_op_and_argument_and_nothing_else() -> None:
    documented = readme_ops()
    assert set(documented) == set(schema.ARGS)
    for op, args in schema.ARGS.items():
        expected = {name: not arg.required for name, arg in args.items()}
        assert documented[op] == expected, op


def test_readme_gives_the_numeric_defaults() -> None:
    section = README.read_text().split("## Wire protocol", 1)[1]
    for op, args in schema.ARGS.items():
        for name, arg in args.items():
            if arg.kind == "int" and arg.default is not None:
                assert f"`{name}`? ({arg.default})" in section, (op, name)


def test_readme_lists_every_error_code() -> None:
    section = README.read_text().split("## Wire protocol", 1)[1].split("\n## ", 1)[0]
    listed = section.split("Error codes:", 1)[1].split("```", 1)[0]
    codes = set(re.findall(r"`(\w+)`", listed))
    assert codes == set(get_args(schema.ErrorCode))
    constants = {
        value
        for name, value in vars(protocol).items()
        if name.isupper() and isinstance(value, str) and value in codes
    }
    assert constants == codes


def test_the_bench_defaults_are_the_runners() -> None:
    assert tuple(schema.ARGS[protocol.BENCH]["modes"].default) == runner.MODES


# --- the validator ----------------------------------------------------------------------


def bad(op: str, message: dict[str, Any]) -> str:
    with pytest.raises(BadRequest) as raised:
        requests.parse(op, message)
    assert raised.value.code == protocol.BAD_REQUEST
    return str(raised.value)


def test_defaults_are_filled_in_and_fresh() -> None:
    first = requests.parse(protocol.HISTORY, {"op": "history"})
    assert first == {"all": False, "limit": 20}
    one = requests.parse(protocol.BENCH, {"path": "/p"})
    assert one["modes"] == ["clean", "incremental"] and one.get("configs") is None
    one["modes"].append("changed")
    assert requests.parse(protocol.BENCH, {"path": "/p"})["modes"] == ["clean", "incremental"]


def test_null_is_absence_only_where_the_default_is_none() -> None:
    assert requests.parse(protocol.STATUS, {"path": None}) == {"path": None}
    assert requests.parse(protocol.TUNE_REVERT, {"path": "/p", "tune_id": None})["force"] is False
    assert "'limit' must be int" in bad(protocol.HISTORY, {"limit": None})
    assert "'all' must be bool" in bad(protocol.HISTORY, {"all": None})


def test_unknown_keys_are_ignored() -> None:
    parsed = requests.parse(protocol.SHOW, {"op": "show", "id": 3, "build_id": 7, "x": [1]})
    assert parsed == {"build_id": 7}


def test_required_arguments() -> None:
    assert "'build_id' is required" in bad(protocol.SHOW, {})
    assert "'path' is required" in bad(protocol.START, {"path": None})
    assert "'ids' is required" in bad(protocol.TUNE_APPLY, {"path": "/p"})
    assert "absolute" in bad(protocol.BENCH, {})
    assert "absolute" in bad(protocol.BENCH, {"path": "relative/dir"})


def test_types_and_ranges() -> None:
    assert "'limit' must be int" in bad(protocol.HISTORY, {"limit": "many"})
    assert "'limit' must be int" in bad(protocol.HISTORY, {"limit": True})
    assert "'limit' must be int" in bad(protocol.HISTORY, {"limit": 2.0})
    assert "at least 1" in bad(protocol.HISTORY, {"limit": 0})
    assert "out of range" in bad(protocol.SHOW, {"build_id": 1 << 63})
    assert requests.parse(protocol.SHOW, {"build_id": (1 << 63) - 1})["build_id"] == (1 << 63) - 1
    assert requests.parse(protocol.SHOW, {"build_id": -(1 << 63)})["build_id"] == -(1 << 63)
    assert "'dry_run' must be bool" in bad(
        protocol.TUNE_APPLY, {"path": "/", "ids": ["a"], "dry_run": 1}
    )
    assert "list of strings" in bad(protocol.TUNE_APPLY, {"path": "/", "ids": ["a", 1]})
    assert "list of strings" in bad(protocol.BENCH, {"path": "/p", "configs": "default"})
    assert "at least one suggestion" in bad(protocol.TUNE_APPLY, {"path": "/", "ids": []})
    assert "'overrides' must be dict" in bad(protocol.START, {"path": "/", "overrides": []})


def test_environments_and_paths_a_process_can_take() -> None:
    assert "map strings to strings" in bad(protocol.START, {"path": "/", "env": {"A": 1}})
    assert "map strings to strings" in bad(protocol.START, {"path": "/", "env": ["A"]})
    for env in ({"": "x"}, {"A=B": "x"}, {"A\0": "x"}, {"A": "x\0"}):
        assert "no process can be given" in bad(protocol.START, {"path": "/", "env": env})
    assert requests.parse(protocol.START, {"path": "/", "env": {"A": ""}})["env"] == {"A": ""}
    assert "NUL" in bad(protocol.STATUS, {"path": "/a\0b"})
    assert "encodable" in bad(protocol.STOP, {"path": "/a\ud800"})
    assert "NUL" in bad(protocol.BENCH, {"path": "/p", "edit": "/p/src\0"})
    # A byte that is not UTF-8, as Python names it, is a file name all the same.
    assert requests.parse(protocol.STATUS, {"path": "/a\udcff"}) == {"path": "/a\udcff"}
